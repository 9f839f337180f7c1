"""The command line: ``main`` parses, sets up logging and turns errors into exit codes; the
other modules hold the thin command functions, one area each."""

from tentacle_poll.cli.main import main

__all__ = ["main"]
