"""Logging set-up: loguru sinks (text or JSON lines), stdlib logging routed in, secrets masked.

Every secret the process learns (API keys, registration tokens, sensitive variables) is handed
to ``hide_secret``; a patcher replaces it in every record before any sink sees it.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from loguru import logger

from tentacle_poll.exceptions import ConfigurationError

if TYPE_CHECKING:
    from loguru import Logger, Record

MASK = "********"
MB = 1024 * 1024
TEXT_FORMAT = "{time:YYYY-MM-DD HH:mm:ss.SSS} {level:<7} {message}"
_secrets: set[str] = set()


def about(event: str, **fields: str | None) -> Logger:
    """A logger whose lines carry ``event`` and the fields given (``task_id``, ``target``,
    ``deployment_id``, ``server``), so JSON logs can be filtered on them (docs/operations.md)."""
    return logger.bind(event=event, **{name: value for name, value in fields.items() if value})


def hide_secret(value: str | None) -> None:
    if value and len(value) >= 4:
        _secrets.add(value)


def mask_secrets(text: str) -> str:
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def setup_logging(
    level: str = "INFO",
    fmt: str = "text",
    stream: TextIO | None = None,
    log_file: Path | None = None,
    rotation_mb: float = 50.0,
    retention_files: int = 10,
) -> None:
    """Logs to ``stream`` (stderr), or to ``log_file`` when given: rotated when it reaches
    ``rotation_mb``, the newest ``retention_files`` rotated files kept."""
    logger.remove()
    # diagnose=False: loguru's default puts variable values (secrets included) in tracebacks.
    options: dict[str, Any] = {"level": level, "diagnose": False, "backtrace": False}
    if log_file is not None:
        _add_file(log_file, fmt, int(rotation_mb * MB), retention_files, options)
    elif fmt == "json":
        logger.add(_json_sink(stream or sys.stderr), **options)
    else:
        logger.add(stream or sys.stderr, format=TEXT_FORMAT, **options)
    logger.configure(patcher=_mask_record)
    logging.basicConfig(handlers=[InterceptHandler()], level=logging.WARNING, force=True)


def _add_file(path: Path, fmt: str, rotation: int, retention: int, options: dict[str, Any]) -> None:
    line: str | Callable[[Record], str] = _json_format if fmt == "json" else TEXT_FORMAT
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        logger.add(
            str(path), format=line, rotation=rotation, retention=retention, opener=_private,
            **options,
        )  # fmt: skip
    except OSError as exc:
        raise ConfigurationError(
            f"cannot write the log file {path}: {exc.strerror or exc}; choose another "
            "--log-file (or log_file in the settings)"
        ) from exc


def _private(path: str, flags: int) -> int:
    return os.open(path, flags, 0o600)  # log lines name targets, tasks and addresses


def _mask_record(record: Record) -> None:
    record["message"] = mask_secrets(record["message"])


def json_line(record: Record) -> str:
    """One record as a JSON object: time, level, message, and its structured fields
    (``task_id``, ``target``, ``server``, ``deployment_id``, ``event``) where it has them."""
    line = {
        "ts": record["time"].isoformat(),
        "level": record["level"].name,
        "message": record["message"],
        **{k: v for k, v in record["extra"].items() if isinstance(v, str | int | float)},
    }
    if record["exception"] is not None:
        line["exception"] = mask_secrets(str(record["exception"].value))
    return json.dumps(line)


def _json_format(record: Record) -> str:
    # loguru formats what a format function returns once more: braces must be doubled.
    return json_line(record).replace("{", "{{").replace("}", "}}") + "\n"


def _json_sink(stream: TextIO) -> Any:
    def write(message: Any) -> None:
        stream.write(json_line(message.record) + "\n")
        stream.flush()

    return write


class InterceptHandler(logging.Handler):
    """Routes stdlib logging (aiohttp, asyncio) into loguru (recipe from loguru's README)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        logger.opt(depth=6, exception=record.exc_info).log(level, record.getMessage())
