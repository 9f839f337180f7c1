"""Package versions in SQLite (the bytes are files named by their SHA-256, beside the store)."""

from __future__ import annotations

import sqlite3

from tentacle_poll.exceptions import StoreError
from tentacle_poll.protocol.models import PackageView

COLUMNS = "package_id, version, sha256, size, format, uploaded_at"


class SqlitePackages:
    """Mixed into SqliteStore; expects ``self._db``."""

    _db: sqlite3.Connection

    async def add_package(self, package: PackageView) -> PackageView:
        """Idempotent for the same bytes; a version re-uploaded with other bytes is refused."""
        existing = self._package(package.package_id, package.version)
        if existing is not None:
            if existing.sha256 != package.sha256:
                raise StoreError(
                    f"{package.package_id} {package.version} already exists with other content "
                    f"(sha256 {existing.sha256}); upload it as a new version"
                )
            return existing
        self._db.execute(
            f"INSERT INTO packages ({COLUMNS}) VALUES (?,?,?,?,?,?)",
            (package.package_id, package.version, package.sha256, package.size,
             package.format, package.uploaded_at),
        )  # fmt: skip
        return package

    async def list_packages(self) -> list[PackageView]:
        rows = self._db.execute(f"SELECT {COLUMNS} FROM packages ORDER BY package_id, uploaded_at")
        return [_package(row) for row in rows.fetchall()]

    async def delete_package(self, package_id: str, version: str) -> PackageView | None:
        found = self._package(package_id, version)
        if found is not None:
            self._db.execute(
                "DELETE FROM packages WHERE package_id = ? AND version = ?", (package_id, version)
            )
        return found

    async def get_package(self, package_id: str, version: str) -> PackageView | None:
        return self._package(package_id, version)

    async def package_uses(self, sha256: str) -> int:
        """How many package versions have these bytes."""
        row = self._db.execute("SELECT COUNT(*) FROM packages WHERE sha256 = ?", (sha256,))
        return int(row.fetchone()[0])

    def _package(self, package_id: str, version: str) -> PackageView | None:
        row = self._db.execute(
            f"SELECT {COLUMNS} FROM packages WHERE package_id = ? AND version = ?",
            (package_id, version),
        ).fetchone()
        return _package(row) if row else None


def _package(row: tuple[object, ...]) -> PackageView:
    package_id, version, sha256, size, package_format, uploaded_at = row
    return PackageView.model_validate(
        {"package_id": package_id, "version": version, "sha256": sha256, "size": size,
         "format": package_format, "uploaded_at": uploaded_at}
    )  # fmt: skip
