"""Deploy a package end to end, roll back, keep N releases; hostile archives are refused."""

from __future__ import annotations

import io
import json
import os
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest

from tentacle_poll.exceptions import RequestRejected
from tentacle_poll.protocol.models import DeploySpec, RollbackSpec, SubmitTask, TaskState, Variable
from tentacle_poll.server.admin_client import AdminClient
from tentacle_poll.workers.extract import Limits, UnsafeArchive, extract

from .conftest import AgentFactory, RunningAgent, run_and_follow

DEPLOY_SH = (
    'echo "deploying $TENTACLE_PACKAGE_VERSION to $TENTACLE_ENVIRONMENT with $DB_PASSWORD"\n'
)


def web_app(folder: Path, version: str, deploy: str = DEPLOY_SH) -> Path:
    path = folder / f"web-{version}.zip"
    files = {
        "index.html": f"<h1>{version}</h1>",
        "PreDeploy.sh": f'echo "pre {version} in $(basename $PWD)"\n',
        "Deploy.sh": deploy,
        "PostDeploy.py": f"print('post {version}')\n",
    }
    with zipfile.ZipFile(path, "w") as archive:
        for name, text in files.items():
            # A fixed timestamp: the same version built twice must be the same bytes.
            archive.writestr(zipfile.ZipInfo(name, date_time=(2026, 1, 1, 0, 0, 0)), text)
    return path


def deploy_task(version: str, retain: int = 3) -> SubmitTask:
    return SubmitTask(
        target="web1", kind="deploy",
        deploy=DeploySpec(package_id="web", version=version, retain_releases=retain),
        variables=[Variable(name="DB_PASSWORD", value="s3cret-db", sensitive=True)],
    )  # fmt: skip


def app_folder(agent: RunningAgent) -> Path:
    return agent.agent.home.folder / "Applications" / "Test" / "web"


async def deploy(
    admin: AdminClient, tmp_path: Path, version: str, **kw: object
) -> tuple[TaskState, list[str], str]:
    await admin.upload_package("web", version, web_app(tmp_path, version, **kw), "zip")  # type: ignore[arg-type]
    final, events = await run_and_follow(admin, deploy_task(version))
    return final.state, [e.text for e in events], final.reason


@pytest.mark.parametrize("mode", ["polling", "listening"])
async def test_deploy_switches_current_and_runs_the_scripts_with_variables(
    start_agent: AgentFactory, admin: AdminClient, tmp_path: Path
) -> None:
    agent = await start_agent("web1")
    state, lines, _ = await deploy(admin, tmp_path, "1.0.0")
    assert state == TaskState.SUCCEEDED, lines
    current = app_folder(agent) / "current"
    assert os.readlink(current) == "1.0.0"
    assert (current / "index.html").read_text() == "<h1>1.0.0</h1>"
    assert "pre 1.0.0 in 1.0.0" in lines
    assert "deploying 1.0.0 to Test with ********" in lines
    assert "post 1.0.0" in lines
    assert lines.index("pre 1.0.0 in 1.0.0") < lines.index("post 1.0.0")
    assert any(line.startswith("downloading") for line in lines)
    # The same package again: the cache is used, and a new release folder is made.
    state, lines, _ = await deploy(admin, tmp_path, "1.0.0")
    assert state == TaskState.SUCCEEDED and any(
        line.startswith("using the cached") for line in lines
    )
    assert os.readlink(current) == "1.0.0_1"
    # A rollback to the redeployed release sets the version the deploy set, not "1.0.0_1".
    rollback = SubmitTask(
        target="web1", kind="rollback", rollback=RollbackSpec(package_id="web", version="1.0.0"),
        variables=[Variable(name="DB_PASSWORD", value="x", sensitive=True)],
    )  # fmt: skip
    await admin.upload_package("web", "2.0.0", web_app(tmp_path, "2.0.0"), "zip")
    assert (await run_and_follow(admin, deploy_task("2.0.0")))[0].state == TaskState.SUCCEEDED
    final, events = await run_and_follow(admin, rollback)
    assert final.state == TaskState.SUCCEEDED and os.readlink(current) == "1.0.0_1"
    assert "deploying 1.0.0 to Test with ********" in [e.text for e in events]


@pytest.mark.parametrize("mode", ["polling", "listening"])
async def test_failing_deploy_script_leaves_current_on_the_previous_release(
    start_agent: AgentFactory, admin: AdminClient, tmp_path: Path
) -> None:
    agent = await start_agent("web1")
    assert (await deploy(admin, tmp_path, "1.0.0"))[0] == TaskState.SUCCEEDED
    state, lines, reason = await deploy(admin, tmp_path, "2.0.0", deploy="echo broken; exit 7\n")
    assert state == TaskState.FAILED and reason.startswith("Deploy.sh:") and "code 7" in reason
    assert "broken" in lines
    assert os.readlink(app_folder(agent) / "current") == "1.0.0"
    assert not (app_folder(agent) / "2.0.0").exists()


@pytest.mark.parametrize("mode", ["polling", "listening"])
async def test_rollback_and_retention(
    start_agent: AgentFactory, admin: AdminClient, tmp_path: Path
) -> None:
    agent = await start_agent("web1")
    for version in ("1.0.0", "2.0.0", "3.0.0"):
        await admin.upload_package("web", version, web_app(tmp_path, version), "zip")
        final, _ = await run_and_follow(admin, deploy_task(version, retain=2))
        assert final.state == TaskState.SUCCEEDED
    folder = app_folder(agent)
    assert sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.is_symlink()) == [
        "2.0.0",
        "3.0.0",
    ]
    listed = json.loads((folder / ".releases.json").read_text())
    assert [entry["release"] for entry in listed] == ["2.0.0", "3.0.0"]  # none retention removed
    rollback = SubmitTask(
        target="web1", kind="rollback", rollback=RollbackSpec(package_id="web"),
        variables=[Variable(name="DB_PASSWORD", value="s3cret-db", sensitive=True)],
    )  # fmt: skip
    final, events = await run_and_follow(admin, rollback)
    assert final.state == TaskState.SUCCEEDED
    assert os.readlink(folder / "current") == "2.0.0"
    assert "deploying 2.0.0 to Test with ********" in [e.text for e in events]


async def test_deploy_refuses_unknown_packages_and_foreign_environments(
    start_agent: AgentFactory, admin: AdminClient, tmp_path: Path
) -> None:
    await start_agent("web1")
    with pytest.raises(RequestRejected) as missing:
        await admin.submit(deploy_task("9.9.9"))
    assert missing.value.status == 404 and "upload it first" in missing.value.detail
    await admin.upload_package("web", "1.0.0", web_app(tmp_path, "1.0.0"), "zip")
    elsewhere = deploy_task("1.0.0")
    elsewhere = elsewhere.model_copy(
        update={"deploy": elsewhere.deploy.model_copy(update={"environment": "Prod"})}
    )  # type: ignore[union-attr]
    with pytest.raises(RequestRejected) as wrong:
        await admin.submit(elsewhere)
    assert wrong.value.status == 400 and "not Prod" in wrong.value.detail


# --- hostile archives ----------------------------------------------------------------------------


def zip_with(folder: Path, entries: list[tuple[str, bytes, int]]) -> Path:
    path = folder / "hostile.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for name, data, mode in entries:
            info = zipfile.ZipInfo(name)
            info.external_attr = mode << 16
            archive.writestr(info, data)
    return path


def tar_with(folder: Path, members: list[tarfile.TarInfo]) -> Path:
    path = folder / "hostile.tar.gz"
    with tarfile.open(path, "w:gz") as archive:
        for member in members:
            archive.addfile(member, io.BytesIO(b"x" * member.size) if member.isfile() else None)
    return path


def tar_member(
    name: str, kind: bytes = tarfile.REGTYPE, link: str = "", size: int = 0
) -> tarfile.TarInfo:
    member = tarfile.TarInfo(name)
    member.type, member.linkname, member.size = kind, link, size
    return member


HOSTILE = {
    "absolute path": lambda f: (
        zip_with(f, [("/etc/evil", b"x", 0o100644)]),
        "zip",
        "absolute path",
    ),
    "dot-dot": lambda f: (zip_with(f, [("a/../../evil", b"x", 0o100644)]), "zip", "'..'"),
    "link outside (zip)": lambda f: (
        zip_with(f, [("link", b"../../etc", stat.S_IFLNK | 0o777)]),
        "zip",
        "points outside",
    ),
    "device (zip)": lambda f: (
        zip_with(f, [("dev", b"", stat.S_IFCHR | 0o600)]),
        "zip",
        "device or special",
    ),
    "link outside (tar)": lambda f: (
        tar_with(f, [tar_member("l", tarfile.SYMTYPE, "/etc/passwd")]),
        "tar.gz",
        "points outside",
    ),
    "device (tar)": lambda f: (
        tar_with(f, [tar_member("d", tarfile.CHRTYPE)]),
        "tar.gz",
        "device or special",
    ),
    "fifo (tar)": lambda f: (
        tar_with(f, [tar_member("p", tarfile.FIFOTYPE)]),
        "tar.gz",
        "device or special",
    ),
    "too big": lambda f: (zip_with(f, [("big", b"0" * 5000, 0o100644)]), "zip", "expand to 5000"),
    "too many": lambda f: (
        zip_with(f, [(f"f{i}", b"", 0o100644) for i in range(20)]),
        "zip",
        "entries, over",
    ),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_archives_are_refused_before_anything_is_written(tmp_path: Path, case: str) -> None:
    archive, package_format, reason = HOSTILE[case](tmp_path)
    destination = tmp_path / "apps" / "release"
    with pytest.raises(UnsafeArchive, match=reason):
        extract(archive, package_format, destination, Limits(max_bytes=4096, max_entries=10))
    assert not destination.exists()
    assert list((tmp_path / "apps").iterdir()) == []  # no partial folder left either


def test_links_inside_the_release_are_kept(tmp_path: Path) -> None:
    archive = zip_with(
        tmp_path, [("a/file", b"data", 0o100644), ("a/link", b"file", stat.S_IFLNK | 0o777)]
    )
    destination = tmp_path / "release"
    assert extract(archive, "zip", destination, Limits()) == 1
    assert (destination / "a" / "link").read_bytes() == b"data"


@pytest.mark.parametrize("mode", ["polling", "listening"])
async def test_a_hostile_package_fails_its_deploy_with_the_reason(
    start_agent: AgentFactory, admin: AdminClient, tmp_path: Path
) -> None:
    agent = await start_agent("web1")
    await admin.upload_package(
        "web", "6.6.6", zip_with(tmp_path, [("../../evil", b"x", 0o100644)]), "zip"
    )
    final, _ = await run_and_follow(admin, deploy_task("6.6.6"))
    assert final.state == TaskState.FAILED and "climbs out with '..'" in final.reason
    assert not (app_folder(agent) / "6.6.6").exists()
    assert not app_folder(agent).exists()  # no empty package folder left either
    assert not (tmp_path.parent / "evil").exists()
