"""Extraction cannot write outside the release folder, whatever the archive holds: generated
adversarial tar and zip archives (hypothesis) are extracted next to a victim tree, which must
not change in any way; a refused archive leaves no release and no partial folder. Then the
chains from the field, and bombs refused at the default limits."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import stat
import tarfile
import tempfile
import time
import warnings
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tentacle_poll.exceptions import TaskExecutionError
from tentacle_poll.workers.extract import Limits, UnsafeArchive, extract

# --- archives as data --------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    name: str
    kind: str  # file, dir, symlink, hardlink
    target: str = ""  # a link's target; a file's content


def build(folder: Path, entries: list[Entry], package_format: str) -> Path:
    if package_format == "zip":
        return _zip(folder / "package.zip", entries)
    return _tar(folder / "package.tar.gz", entries)


def _zip(path: Path, entries: list[Entry]) -> Path:
    with zipfile.ZipFile(path, "w") as archive, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Duplicate name": a duplicate is what we want here
        for entry in entries:
            if entry.kind == "hardlink":
                continue  # zip has none
            info = zipfile.ZipInfo(entry.name + ("/" if entry.kind == "dir" else ""))
            mode = {"file": 0o100644, "dir": 0o40755, "symlink": stat.S_IFLNK | 0o777}
            info.external_attr = mode[entry.kind] << 16
            archive.writestr(info, entry.target.encode() if entry.kind != "dir" else b"")
    return path


def _tar(path: Path, entries: list[Entry]) -> Path:
    kinds = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE,
             "hardlink": tarfile.LNKTYPE}  # fmt: skip
    with tarfile.open(path, "w:gz") as archive:
        for entry in entries:
            member = tarfile.TarInfo(entry.name)
            member.type, member.mode = kinds[entry.kind], 0o644
            content = entry.target.encode() if entry.kind == "file" else b""
            member.size = len(content)
            if entry.kind in ("symlink", "hardlink"):
                member.linkname = entry.target
            archive.addfile(member, io.BytesIO(content) if entry.kind == "file" else None)
    return path


# --- the surroundings, and what "nothing changed" means -----------------------------------------


@contextmanager
def surroundings() -> Iterator[tuple[Path, Path]]:
    """A victim tree with the release destination deep inside it: (outer, destination)."""
    outer = Path(tempfile.mkdtemp(prefix="extract-"))
    try:
        (outer / "victim.txt").write_text("original")
        (outer / "etc").mkdir()
        (outer / "etc" / "passwd").write_text("root:x:0:0")
        destination = outer / "apps" / "Production" / "web" / "1.0.0"
        destination.parent.mkdir(parents=True)
        (destination.parent / "victim.txt").write_text("next to the release")
        yield outer, destination
    finally:
        shutil.rmtree(outer, ignore_errors=True)


def snapshot(outer: Path, destination: Path) -> dict[str, tuple[object, ...]]:
    """Every path outside the release: its kind, content, inode, mode, link target."""
    seen: dict[str, tuple[object, ...]] = {}
    for folder, folders, files in os.walk(outer):
        here = Path(folder)
        folders[:] = [f for f in folders if here / f != destination]
        for name in [*folders, *files]:
            path = here / name
            info = path.lstat()
            content = (
                hashlib.sha256(path.read_bytes()).hexdigest()
                if stat.S_ISREG(info.st_mode)
                else os.readlink(path)
                if stat.S_ISLNK(info.st_mode)
                else ""
            )
            # A folder's link count changes with its subfolders (the release's parent gains
            # one); a file's is what a hard link to it would change.
            links = 0 if stat.S_ISDIR(info.st_mode) else info.st_nlink
            seen[str(path.relative_to(outer))] = (info.st_mode, info.st_ino, links, content)
    return seen


def check_extraction(entries: list[Entry], package_format: str) -> None:
    with surroundings() as (outer, destination):
        archive = build(outer, entries, package_format)
        before = snapshot(outer, destination)
        try:
            extract(archive, package_format, destination, Limits())
        except UnsafeArchive:
            assert not destination.exists()
            assert sorted(p.name for p in destination.parent.iterdir()) == ["victim.txt"]
        else:
            assert_links_stay_inside(destination)
        assert snapshot(outer, destination) == before


def assert_links_stay_inside(release: Path) -> None:
    root = release.resolve()
    for folder, _, files in os.walk(release):
        for name in files:
            path = Path(folder) / name
            if path.is_symlink():
                resolved = Path(os.path.realpath(path))
                assert resolved == root or root in resolved.parents, f"{path} -> {resolved}"
            elif path.lstat().st_nlink > 1:
                assert _links_of(path.lstat().st_ino, release) == path.lstat().st_nlink


def _links_of(inode: int, release: Path) -> int:
    return sum(1 for p in release.rglob("*") if not p.is_symlink() and p.lstat().st_ino == inode)


# --- generated archives -------------------------------------------------------------------------

NAMES = ["a", "b", "l0", "l1", "l2", "A", "\u00e9", "e\u0301", "victim.txt", "etc", "x.sh"]
TARGETS = [".", "..", "../..", "../../..", "../../../..", "/etc/passwd", "/", "a", "a/b", "l0/..",
           "l1/..", "l0/../..", "l1/../..", "victim.txt", "../victim.txt", "etc/passwd", "",
           "l0/l1", "a/../..", "./a/../../victim.txt"]  # fmt: skip
names = st.lists(st.sampled_from(NAMES), min_size=1, max_size=3).map("/".join)
entries = st.lists(
    st.one_of(
        st.builds(Entry, names, st.just("file"), st.sampled_from(["x", "owned"])),
        st.builds(Entry, names, st.just("dir")),
        st.builds(Entry, names, st.just("symlink"), st.sampled_from(TARGETS) | names),
        st.builds(Entry, names, st.just("hardlink"), st.sampled_from(TARGETS) | names),
    ),
    min_size=1,
    max_size=12,
)


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(entries=entries, package_format=st.sampled_from(["tar.gz", "zip"]))
def test_no_archive_changes_anything_outside_its_release(
    entries: list[Entry], package_format: str
) -> None:
    check_extraction(entries, package_format)


# --- the cases from the field -----------------------------------------------------------------


def climbing_chain(depth: int) -> list[Entry]:
    """l0 -> ., l1 -> l0/.., l2 -> l1/.. ...: each looks inside on paper, each climbs one."""
    chain = [Entry("l0", "symlink", ".")]
    chain += [Entry(f"l{i}", "symlink", f"l{i - 1}/..") for i in range(1, depth + 1)]
    return chain


@pytest.mark.parametrize("package_format", ["tar.gz", "zip"])
def test_a_chain_of_climbing_links_is_refused(package_format: str) -> None:
    entries = [*climbing_chain(6), Entry("l6/escaped-deep.txt", "file", "owned")]
    with surroundings() as (outer, destination):
        archive = build(outer, entries, package_format)
        with pytest.raises(UnsafeArchive, match="through another link"):
            extract(archive, package_format, destination, Limits())
        assert not list(outer.rglob("escaped-deep.txt")) and not destination.exists()


def test_a_hard_link_through_the_chain_overwrites_nothing() -> None:
    entries = [*climbing_chain(2), Entry("hv", "hardlink", "l2/victim.txt"),
               Entry("hv", "file", "owned")]  # fmt: skip
    with surroundings() as (outer, destination):
        archive = build(outer, entries, "tar.gz")
        with pytest.raises(UnsafeArchive):
            extract(archive, "tar.gz", destination, Limits())
        assert (outer / "apps" / "Production" / "web" / "victim.txt").read_text().startswith("next")


@pytest.mark.parametrize(
    ("entries", "reason"),
    [
        ([Entry("a", "symlink", "."), Entry("a/f", "file", "x")], "already a link"),
        ([Entry("f", "file", "x"), Entry("f", "file", "y")], "twice"),
        ([Entry("f", "symlink", "g"), Entry("f", "file", "y")], "twice"),
        ([Entry("d", "file", "x"), Entry("d/f", "file", "y")], "already a link or another kind"),
        ([Entry("README", "file", "x"), Entry("readme", "file", "y")], "differ only by case"),
        ([Entry("\u00e9", "file", "x"), Entry("e\u0301", "file", "y")], "Unicode"),
        ([Entry("h", "hardlink", "nothing")], "not a file extracted before"),
        ([Entry("s", "symlink", "t"), Entry("h", "hardlink", "s")], "not a file extracted before"),
        ([Entry("a", "dir"), Entry("a/l", "symlink", "../../x")], "outside the release"),
    ],
)
def test_each_kind_of_trick_is_refused_by_name(entries: list[Entry], reason: str) -> None:
    with surroundings() as (outer, destination):
        archive = build(outer, entries, "tar.gz")
        with pytest.raises(UnsafeArchive, match=reason):
            extract(archive, "tar.gz", destination, Limits())


def test_honest_links_and_hard_links_are_kept() -> None:
    entries = [
        Entry("bin/run.sh", "file", "echo hi"),
        Entry("run", "symlink", "bin/run.sh"),
        Entry("bin/again.sh", "hardlink", "bin/run.sh"),
        Entry("up", "symlink", "bin/.."),
    ]
    with surroundings() as (outer, destination):
        assert extract(build(outer, entries, "tar.gz"), "tar.gz", destination, Limits()) == 2
        assert (destination / "run").read_text() == "echo hi"
        assert (destination / "bin" / "again.sh").stat().st_ino == (
            destination / "bin" / "run.sh"
        ).stat().st_ino


# --- bombs ------------------------------------------------------------------------------------

GIB = 1024**3


@pytest.fixture(scope="module")
def zip_bomb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """1 GiB of zeros in one entry: about 1 MB of zip."""
    path = tmp_path_factory.mktemp("bomb") / "bomb.zip"
    zeros = bytes(16 * 1024**2)
    with (
        zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive,
        archive.open("zeros.bin", "w", force_zip64=True) as entry,
    ):
        for _ in range(GIB // len(zeros)):
            entry.write(zeros)
    return path


def test_a_one_gib_zip_bomb_is_refused_at_the_defaults_in_under_a_second(
    zip_bomb: Path, tmp_path: Path
) -> None:
    destination = tmp_path / "release"
    started = time.monotonic()
    with pytest.raises(UnsafeArchive, match="zip bomb"):
        extract(zip_bomb, "zip", destination, Limits())
    assert time.monotonic() - started < 1.0
    assert list(tmp_path.iterdir()) == []


def test_a_tar_bomb_is_stopped_by_the_bytes_it_really_writes(tmp_path: Path) -> None:
    """tar declares honest sizes; only the ratio of what is written to what was read stops it."""
    path = tmp_path / "bomb.tar.gz"
    member = tarfile.TarInfo("zeros.bin")
    member.size = GIB // 4
    with tarfile.open(path, "w:gz") as archive:
        archive.addfile(member, io.BufferedReader(_Zeros(member.size)))  # type: ignore[arg-type]
    destination = tmp_path / "apps" / "release"
    with pytest.raises(UnsafeArchive, match="expands over 100 times"):
        extract(path, "tar.gz", destination, Limits())
    assert list((tmp_path / "apps").iterdir()) == []


class _Zeros(io.RawIOBase):
    def __init__(self, size: int) -> None:
        self._left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        count = min(len(buffer), self._left)
        buffer[:count] = bytes(count)
        self._left -= count
        return count


def test_extraction_stops_before_the_disk_falls_under_the_floor(tmp_path: Path) -> None:
    noise = os.urandom(16 * 1024**2)  # incompressible: no ratio check fires
    archive = build(tmp_path, [Entry("noise.bin", "file", "")], "zip")
    with zipfile.ZipFile(archive, "w") as rewritten:
        rewritten.writestr("noise.bin", noise)
    disk = os.statvfs(tmp_path)
    floor = disk.f_bavail * disk.f_frsize - 4 * 1024**2  # 4 MiB above: 16 would cross it
    destination = tmp_path / "apps" / "release"
    with pytest.raises(TaskExecutionError, match="free on the disk"):
        extract(archive, "zip", destination, Limits(min_free_bytes=floor))
    assert list((tmp_path / "apps").iterdir()) == []
