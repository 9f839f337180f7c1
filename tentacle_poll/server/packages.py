"""Packages: uploaded through the admin API, stored once per content (named by SHA-256),
downloaded by agents over the comms channel with ``Range`` so a cut download resumes.

Uploads are streamed to disk while they are hashed: a package is never held in memory, and a
failed upload leaves nothing behind but a temporary file that is removed.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from pathlib import Path

from aiohttp import web
from loguru import logger

from tentacle_poll.exceptions import StoreError
from tentacle_poll.protocol import routes
from tentacle_poll.protocol.models import FileView, PackageView
from tentacle_poll.server.access import audit
from tentacle_poll.server.comms import authorised_agent, own_task
from tentacle_poll.server.problems import ProblemError, refuse_oversized
from tentacle_poll.server.state import STATE, ServerState, json_response, task_view
from tentacle_poll.server.task_rules import check_file

CHUNK = 256 * 1024
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
SHA256 = re.compile(r"[0-9a-f]{64}")
MAGIC = {"zip": b"PK\x03\x04", "tar.gz": b"\x1f\x8b"}


def add_package_admin_routes(app: web.Application) -> None:
    app.router.add_get(routes.ADMIN_PACKAGES, list_packages)
    app.router.add_put(routes.ADMIN_PACKAGE, upload_package)
    app.router.add_delete(routes.ADMIN_PACKAGE, delete_package)


def add_package_comms_routes(app: web.Application) -> None:
    app.router.add_get(routes.PACKAGE_BLOB, download_package)
    app.router.add_put(routes.TASK_FILE, receive_task_file)


def add_file_admin_routes(app: web.Application) -> None:
    app.router.add_put(routes.ADMIN_FILES, upload_file)
    app.router.add_get(routes.ADMIN_FILE, fetch_file)


async def upload_file(request: web.Request) -> web.Response:
    """A file to send to targets (send_file tasks); stored by content like packages."""
    state = request.app[STATE]
    temporary, sha256, size = await _receive(request, state)
    await state.blobs.keep(temporary, sha256)
    await audit(request, "file uploaded", sha256, f"{size} bytes")
    return json_response(FileView(sha256=sha256, size=size), status=201)


async def fetch_file(request: web.Request) -> web.StreamResponse:
    """Bytes a target sent (fetch_file tasks), or any stored file, by SHA-256."""
    return await _blob_response(request.app[STATE], request.match_info["sha256"])


async def receive_task_file(request: web.Request) -> web.Response:
    """A fetch_file task's agent sends the file here; its digest is the task's answer."""
    state = request.app[STATE]
    task = await own_task(request)
    check_file(task, task_view(task).kind)
    temporary, sha256, size = await _receive(request, state)
    await state.blobs.keep(temporary, sha256)
    return json_response(FileView(sha256=sha256, size=size), status=201)


async def list_packages(request: web.Request) -> web.Response:
    packages = await request.app[STATE].store.list_packages()
    return web.json_response([p.model_dump(mode="json") for p in packages])


async def upload_package(request: web.Request) -> web.Response:
    state = request.app[STATE]
    package_id, version = _names(request)
    package_format = _format(request)
    temporary, sha256, size = await _receive(request, state)
    try:
        _check_magic(temporary, package_format)
        # The bytes first: once the version is listed, any node may be asked for them.
        await state.blobs.keep(temporary, sha256)
    finally:
        temporary.unlink(missing_ok=True)
    package = PackageView(
        package_id=package_id, version=version, sha256=sha256, size=size,
        format=package_format, uploaded_at=time.time(),
    )  # fmt: skip
    try:
        stored = await state.store.add_package(package)
    except StoreError as exc:  # the bytes kept stay: named by content, they harm nothing
        raise ProblemError(409, "version exists with other content", str(exc)) from exc
    await audit(request, "package uploaded", f"{package_id} {version}", sha256)
    logger.info("package {} {} stored ({} bytes, sha256 {})", package_id, version, size, sha256)
    return json_response(stored, status=201)


async def delete_package(request: web.Request) -> web.Response:
    state = request.app[STATE]
    package_id, version = _names(request)
    deleted = await state.store.delete_package(package_id, version)
    if deleted is None:
        raise ProblemError(404, "no such package", f"no package {package_id} {version}")
    if await state.store.package_uses(deleted.sha256) == 0:
        await state.blobs.forget(deleted.sha256)
    await audit(request, "package deleted", f"{package_id} {version}", deleted.sha256)
    return json_response(deleted)


async def download_package(request: web.Request) -> web.StreamResponse:
    """The bytes of a stored package, for an agent that holds a task naming them (its deploy,
    its file to put in place); aiohttp's FileResponse answers ``Range`` requests. Anything else
    is 404, not 403: an agent learns nothing about which bytes exist (files fetched from
    targets are for the admin API alone)."""
    state = request.app[STATE]
    agent = await authorised_agent(request)
    sha256 = request.match_info["sha256"]
    if not SHA256.fullmatch(sha256) or not await state.store.task_needs_blob(agent.id, sha256):
        raise ProblemError(404, "no such content", f"nothing stored with sha256 {sha256}")
    return await _blob_response(state, sha256)


async def _blob_response(state: ServerState, sha256: str) -> web.FileResponse:
    path = await state.blobs.local(sha256) if SHA256.fullmatch(sha256) else None
    if path is None:
        raise ProblemError(404, "no such content", f"nothing stored with sha256 {sha256}")
    return web.FileResponse(path, chunk_size=CHUNK)


async def _receive(request: web.Request, state: ServerState) -> tuple[Path, str, int]:
    """Streams the body to a temporary file, hashing it; refuses one over the size limit."""
    folder = state.blobs.folder
    folder.mkdir(parents=True, exist_ok=True)
    temporary = folder / f".upload-{os.getpid()}-{id(request)}"
    digest, size, limit = hashlib.sha256(), 0, state.settings.max_package_bytes
    refuse_oversized(request, limit)
    try:
        with open(temporary, "wb") as handle:
            async for chunk in request.content.iter_chunked(CHUNK):
                size += len(chunk)
                if size > limit:
                    raise ProblemError(413, "package too large", f"the limit is {limit} bytes")
                digest.update(chunk)
                handle.write(chunk)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    if size == 0:
        temporary.unlink()
        raise ProblemError(400, "empty package", "send the package file as the request body")
    return temporary, digest.hexdigest(), size


def _check_magic(path: Path, package_format: str) -> None:
    with open(path, "rb") as handle:
        head = handle.read(4)
    if not head.startswith(MAGIC[package_format]):
        raise ProblemError(400, "not a package", f"the body is not a {package_format} archive")


def _names(request: web.Request) -> tuple[str, str]:
    package_id, version = request.match_info["package_id"], request.match_info["version"]
    if not NAME.match(package_id) or not NAME.match(version):
        detail = "package id and version: letters, digits, '.', '_' and '-', up to 100"
        raise ProblemError(400, "malformed request", detail)
    return package_id, version


def _format(request: web.Request) -> str:
    package_format = request.query.get("format", "")
    if package_format not in MAGIC:
        raise ProblemError(400, "malformed request", "format must be zip or tar.gz")
    return package_format
