"""A stand-in for the console (the Laravel host): its `/broadcasting/auth` and
`/broadcasting/user-auth`, signed by Pusher's own Python library as Laravel's pusher
broadcaster signs them, with a `routes/channels.php` of allowed channel names."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from urllib.parse import parse_qs

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.conftest import RunningServer, free_socket
from tests.pusher_support import host


@dataclass
class Host:
    port: int
    allowed: set[str] = field(default_factory=set)  # what channels.php's callbacks allow
    user_id: int | None = None  # the signed-in user of /broadcasting/user-auth
    asked: list[str] = field(default_factory=list)
    # channel_data for presence channels: {"user_id": …, "user_info": …}
    presence: dict[str, object] | None = None

    @property
    def auth_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/broadcasting/auth"

    @property
    def user_auth_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/broadcasting/user-auth"


_CORS = {"Access-Control-Allow-Origin": "*"}  # the page is served by opspush, not the host


async def _form(request: Request) -> dict[str, str]:
    """pusher-js posts its auth requests form-encoded."""
    return {k: v[0] for k, v in parse_qs((await request.body()).decode()).items()}


@contextlib.asynccontextmanager
async def running_host(server: RunningServer, port: int = 0) -> AsyncIterator[Host]:
    """The stand-in console on `port` (0: a free one)."""
    client = host(server)
    sock = free_socket(port)
    state = Host(sock.getsockname()[1])

    async def auth(request: Request) -> Response:
        form = await _form(request)
        channel, socket_id = form["channel_name"], form["socket_id"]
        state.asked.append(channel)
        if channel not in state.allowed:
            return JSONResponse({"message": "forbidden"}, status_code=403, headers=_CORS)
        custom = state.presence if channel.startswith("presence-") else None
        signed = client.authenticate(channel=channel, socket_id=socket_id, custom_data=custom)
        return JSONResponse(signed, headers=_CORS)

    async def user_auth(request: Request) -> Response:
        form = await _form(request)
        if state.user_id is None:
            return JSONResponse({"message": "unauthenticated"}, status_code=403, headers=_CORS)
        signed = client.authenticate_user(form["socket_id"], {"id": str(state.user_id)})
        return JSONResponse(signed, headers=_CORS)

    app = Starlette(
        routes=[
            Route("/broadcasting/auth", auth, methods=["POST"]),
            Route("/broadcasting/user-auth", user_auth, methods=["POST"]),
        ]
    )
    config = uvicorn.Config(app, log_level="warning", lifespan="off")
    server_ = uvicorn.Server(config)
    task = asyncio.create_task(server_.serve(sockets=[sock]))
    try:
        async with asyncio.timeout(15):
            while not server_.started:
                if task.done():
                    task.result()
                await asyncio.sleep(0.01)
        yield state
    finally:
        server_.should_exit = True
        await task
        sock.close()
