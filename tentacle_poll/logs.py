"""Logging set-up: loguru sinks (text or JSON lines), stdlib logging routed in, secrets masked.

Every secret the process learns (API keys, registration tokens, sensitive variables) is handed
to ``hide_secret``; a patcher replaces it in every record before any sink sees it.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import TYPE_CHECKING, Any, TextIO

from loguru import logger

if TYPE_CHECKING:
    from loguru import Record

MASK = "********"
TEXT_FORMAT = "{time:YYYY-MM-DD HH:mm:ss.SSS} {level:<7} {message}"
_secrets: set[str] = set()


def hide_secret(value: str | None) -> None:
    if value and len(value) >= 4:
        _secrets.add(value)


def mask_secrets(text: str) -> str:
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def setup_logging(level: str = "INFO", fmt: str = "text", stream: TextIO | None = None) -> None:
    stream = stream or sys.stderr
    logger.remove()
    # diagnose=False: loguru's default puts variable values (secrets included) in tracebacks.
    if fmt == "json":
        logger.add(_json_sink(stream), level=level, diagnose=False, backtrace=False)
    else:
        logger.add(stream, level=level, format=TEXT_FORMAT, diagnose=False, backtrace=False)
    logger.configure(patcher=_mask_record)
    logging.basicConfig(handlers=[InterceptHandler()], level=logging.WARNING, force=True)


def _mask_record(record: Record) -> None:
    record["message"] = mask_secrets(record["message"])


def _json_sink(stream: TextIO) -> Any:
    def write(message: Any) -> None:
        record = message.record
        line = {
            "ts": record["time"].isoformat(),
            "level": record["level"].name,
            "message": record["message"],
            **{k: v for k, v in record["extra"].items() if isinstance(v, str | int | float)},
        }
        if record["exception"] is not None:
            line["exception"] = mask_secrets(str(record["exception"].value))
        stream.write(json.dumps(line) + "\n")
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
