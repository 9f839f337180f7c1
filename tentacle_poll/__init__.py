"""tentacle_poll: a polling deployment agent and the server it talks to."""

__version__ = "0.1.0"
