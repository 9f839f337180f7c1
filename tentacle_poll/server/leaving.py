"""Targets leaving: deleted by an operator (``DELETE /api/targets/NAME``) or by their own agent
(``POST /v1/deregister``, authenticated by its certificate alone, no API key). Either way its
certificate is refused from then on and its open connections close; its tasks and output go."""

from __future__ import annotations

from aiohttp import web

from tentacle_poll.protocol.models import DeregisterRequest, DeregisterResponse
from tentacle_poll.server.access import record
from tentacle_poll.server.comms import authorised_agent
from tentacle_poll.server.state import STATE, json_response, read_model


async def deregister(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    agent = await authorised_agent(request)
    await read_model(request, DeregisterRequest)
    if await state.store.delete_agent(agent.name) is None:  # another node was first
        return json_response(DeregisterResponse(name=agent.name))
    await record(state, f"target {agent.name}", "target deregistered", agent.name,
                 agent.thumbprint)  # fmt: skip
    # Answered first: closing the target's connections closes this one too.
    response = json_response(DeregisterResponse(name=agent.name))
    await response.prepare(request)
    await response.write_eof()
    await state.stop_trusting(agent, "deregistered itself")
    return response
