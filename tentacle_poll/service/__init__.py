"""Running the agent or the server as a system service: the unit (``units``) and systemd's
hands on it (``systemd``). Imports nothing of the agent or the server: the command line
hands it the paths and numbers their settings give."""
