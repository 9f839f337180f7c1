"""The server: comms listener (mutual TLS), admin API, task queue and leases."""

from tentacle_poll.server.app import Server

__all__ = ["Server"]
