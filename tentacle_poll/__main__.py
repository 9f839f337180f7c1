"""`python -m tentacle_poll` is the same as the `tentacle-poll` command."""

from tentacle_poll.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
