"""Versioned wire models, routes, header names and the codec. No network I/O lives here."""
