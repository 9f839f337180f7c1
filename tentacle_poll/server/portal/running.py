"""Running something from the portal: a script, or a package to deploy, on one target or on
every target of an environment (and roles). The form is posted twice: first to see what would
run where (the confirmation), then, confirmed, to run it, as the session's key.

A mistake in the form (an empty script, an unknown target, an environment the key may not
deploy to) shows the form again with what was typed and what was wrong.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiohttp import web

from tentacle_poll.exceptions import ProtocolError
from tentacle_poll.protocol.codec import decode_object
from tentacle_poll.protocol.models import FanOut, SubmitTask, TaskSpec
from tentacle_poll.server.access import require_environment, require_target
from tentacle_poll.server.admin import submit
from tentacle_poll.server.deployments import deploy, matching_targets
from tentacle_poll.server.portal.deployments import deployment_page_of
from tentacle_poll.server.portal.guard import acting_as, form_of, require, signed_in
from tentacle_poll.server.portal.rendering import page
from tentacle_poll.server.portal.sessions import Session
from tentacle_poll.server.portal.tasks import task_page_of
from tentacle_poll.server.problems import ProblemError
from tentacle_poll.server.state import STATE

FIELDS = ("kind", "target", "environment", "roles", "syntax", "body", "package_id", "version")
SYNTAXES = ("bash", "sh", "python", "pwsh", "cmd")
NAMED_TARGETS = 50  # the confirmation names this many targets, and counts the rest


@dataclass(frozen=True)
class Order:
    """What the form asks: a task, and where (one target, or an environment and roles)."""

    task: TaskSpec
    target: str
    environment: str
    roles: list[str]

    def fan_out(self) -> FanOut:
        return decode_object(FanOut, {"environment": self.environment, "roles": self.roles,
                                      "task": self.task.model_dump()})  # fmt: skip


async def run_form(request: web.Request) -> web.Response:
    session = await signed_in(request)
    require(session, "deploy")
    return _form_page(session, {name: request.query.get(name, "") for name in FIELDS})


async def run(request: web.Request) -> web.StreamResponse:
    session = await signed_in(request)
    form = await form_of(request, session)
    acting_as(request, session)
    values = {name: str(form.get(name, "")) for name in FIELDS}
    try:
        order = order_from(values)
        if form.get("confirmed") != "yes":
            return await _confirmation(request, session, order, values)
        where = await _run(request, order)
    except ProblemError as exc:
        return _form_page(session, values, exc.problem.detail, exc.problem.status)
    except ProtocolError as exc:
        return _form_page(session, values, str(exc), 400)
    raise web.HTTPSeeOther(where)


def order_from(values: dict[str, str]) -> Order:
    target, environment = values["target"].strip(), values["environment"].strip()
    if not target and not environment:
        raise ProtocolError("name a target, or an environment (and roles) to run on")
    if target and environment:
        raise ProtocolError("name one target, or an environment (and roles), not both")
    roles = [role.strip() for role in values["roles"].split(",") if role.strip()]
    return Order(decode_object(TaskSpec, _task(values)), target, environment, roles)


def _task(values: dict[str, str]) -> dict[str, Any]:
    if values["kind"] == "deploy":
        package = {"package_id": values["package_id"].strip(), "version": values["version"].strip()}
        return {"kind": "deploy", "deploy": package}
    # A browser sends a textarea's lines ending in CR LF; a shell would keep the CRs.
    body = values["body"].replace("\r\n", "\n")
    return {"kind": "script", "script": {"syntax": values["syntax"] or "bash", "body": body}}


async def _confirmation(
    request: web.Request, session: Session, order: Order, values: dict[str, str]
) -> web.Response:
    names = await _where(request, order)
    return page(
        "confirm.html", session=session, values=values, order=order,
        named=names[:NAMED_TARGETS], more=len(names) - NAMED_TARGETS,  count=len(names),
    )  # fmt: skip


async def _where(request: web.Request, order: Order) -> list[str]:
    """The targets the order would run on, once the key is known to be allowed there."""
    state = request.app[STATE]
    if order.target:
        agent = await state.store.agent_by_name(order.target)
        if agent is None:
            raise ProblemError(404, "no such target", f"no target named {order.target}")
        require_target(request, agent)
        return [agent.name]
    targets = await matching_targets(state, order.fan_out())
    require_environment(request, order.environment)
    return [agent.name for agent in targets]


async def _run(request: web.Request, order: Order) -> str:
    """Runs the order; the page to follow it on."""
    if order.target:
        body = SubmitTask.model_validate({**order.task.model_dump(), "target": order.target})
        return task_page_of((await submit(request, body)).id)
    return deployment_page_of(await deploy(request, order.fan_out()))


def _form_page(
    session: Session, values: dict[str, str], problem: str = "", status: int = 200
) -> web.Response:
    return page("run.html", status=status, session=session, values=values, problem=problem,
                syntaxes=SYNTAXES)  # fmt: skip
