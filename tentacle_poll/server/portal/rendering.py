"""How portal pages are made: Jinja2 templates that escape every value (a target name or an
output line is never markup), and the few formats the pages share."""

from __future__ import annotations

import datetime as dt
from typing import Any

from aiohttp import web
from jinja2 import Environment, PackageLoader, select_autoescape

from tentacle_poll.protocol.models import Problem

TEMPLATES = Environment(
    loader=PackageLoader("tentacle_poll.server.portal", "templates"),
    autoescape=select_autoescape(["html"]),
)


def page(template: str, status: int = 200, **values: Any) -> web.Response:
    html = TEMPLATES.get_template(template).render(**values)
    return web.Response(text=html, status=status, content_type="text/html")


def problem_page(problem: Problem) -> web.Response:
    return page("problem.html", status=problem.status, problem=problem)


def when(stamp: float | None) -> str:
    """A moment in the server's local time, to the second; "-" for none."""
    if not stamp:
        return "-"
    return dt.datetime.fromtimestamp(stamp).strftime("%Y-%m-%d %H:%M:%S")


def size(count: int) -> str:
    for unit in ("bytes", "KiB", "MiB"):
        if count < 1024:
            return f"{count} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1024  # type: ignore[assignment]
    return f"{count:.1f} GiB"


TEMPLATES.filters["when"] = when
TEMPLATES.filters["size"] = size
