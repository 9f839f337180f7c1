"""Schema versions: every store records the version of its layout, and a server only runs on
the version it was built for. Older layouts are brought up by ordered migrations, applied by
`tentacle-poll server migrate` or by `server run --migrate`, never silently; a layout newer than
the server is refused (a newer server migrated it: an older one could misread it)."""

from __future__ import annotations

from dataclasses import dataclass

from tentacle_poll.exceptions import ConfigurationError


@dataclass(frozen=True)
class SchemaState:
    found: int  # 0: an empty database (made at the latest version without asking)
    latest: int
    where: str  # the database, as an operator names it (a path, or host/database/schema)


class SchemaTooOld(ConfigurationError):
    """The database needs migrating before this server can use it."""


class SchemaTooNew(ConfigurationError):
    """The database was migrated by a newer server."""


def check(state: SchemaState, migrate: bool) -> bool:
    """Whether migrations must run now; raises when the server must not start."""
    if state.found > state.latest:
        raise SchemaTooNew(
            f"the database {state.where} has schema version {state.found}, newer than this "
            f"server's {state.latest}: a newer tentacle-poll migrated it. Run that version "
            "(going back needs the backup taken before the upgrade)"
        )
    if state.found == state.latest:
        return False
    if state.found == 0 or migrate:
        return True
    raise SchemaTooOld(
        f"the database {state.where} has schema version {state.found}; this server needs "
        f"{state.latest}. Back it up, then run `tentacle-poll server migrate` (or start the "
        "server with --migrate); docs/high-availability.md, 'Upgrades'"
    )
