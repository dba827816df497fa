"""Helpers for the Pusher endpoint's tests: a server with the app configured, a raw
`websockets` client speaking Pusher frames, and the host's side signed by Pusher's own
Python library (`pusher` on PyPI), as a Laravel app's broadcaster would."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pusher as pusher_library
import websockets
from websockets.asyncio.client import ClientConnection

from opspush.config import PusherApp
from tests.conftest import RunningServer, running_server

APP = PusherApp(app_id="4242", key="opspush-test-key", secret="opspush-test-pusher-secret-0123")


@contextlib.asynccontextmanager
async def pusher_server(dsn: str, **overrides: Any) -> AsyncIterator[RunningServer]:
    async with running_server(dsn, pusher=APP, **overrides) as running:
        yield running


def host(server: RunningServer, secret: str = APP.secret, app_id: str = APP.app_id) -> Any:
    """The host application's Pusher client, pointed at opspush."""
    return pusher_library.Pusher(
        app_id=app_id, key=APP.key, secret=secret, host="127.0.0.1", port=server.port, ssl=False
    )


@dataclass
class PusherSocket:
    connection: ClientConnection
    socket_id: str
    activity_timeout: int

    @classmethod
    async def open(cls, server: RunningServer, key: str = APP.key) -> PusherSocket:
        url = f"ws://127.0.0.1:{server.port}/app/{key}?protocol=7&client=test&version=1"
        connection = await websockets.connect(url)
        first = json.loads(await asyncio.wait_for(connection.recv(), 10))
        assert first["event"] == "pusher:connection_established", first
        data = json.loads(first["data"])
        return cls(connection, data["socket_id"], data["activity_timeout"])

    async def send(self, event: str, data: Any = None, channel: str | None = None) -> None:
        frame: dict[str, Any] = {"event": event, "data": {} if data is None else data}
        if channel is not None:
            frame["channel"] = channel
        await self.connection.send(json.dumps(frame))

    async def recv(self, timeout: float = 10.0) -> dict[str, Any]:
        """The next frame, with `data` decoded when it travels as a JSON string."""
        async with asyncio.timeout(timeout):
            frame: dict[str, Any] = json.loads(await self.connection.recv())
        if isinstance(frame.get("data"), str):
            with contextlib.suppress(ValueError):
                frame["data"] = json.loads(frame["data"])
        return frame

    async def until(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 15.0
    ) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                frame = await self.recv(timeout)
                if predicate(frame):
                    return frame

    async def subscribe(self, channel: str, auth: str | None = None) -> dict[str, Any]:
        """Subscribe and return the answer (subscription_succeeded or subscription_error)."""
        data: dict[str, Any] = {"channel": channel}
        if auth is not None:
            data["auth"] = auth
        await self.send("pusher:subscribe", data)
        return await self.until(lambda f: f.get("channel") == channel)

    async def closed(self, timeout: float = 10.0) -> int | None:
        async with asyncio.timeout(timeout):
            with contextlib.suppress(websockets.ConnectionClosed):
                while True:
                    await self.connection.recv()
        return self.connection.close_code

    async def close(self) -> None:
        await self.connection.close()


def channel_auth(client: Any, socket_id: str, channel: str) -> str:
    auth: str = client.authenticate(channel=channel, socket_id=socket_id)["auth"]
    return auth


async def signin(client: Any, socket: PusherSocket, user_id: int) -> dict[str, Any]:
    signed = client.authenticate_user(socket.socket_id, {"id": str(user_id)})
    await socket.send("pusher:signin", {"auth": signed["auth"], "user_data": signed["user_data"]})
    return await socket.until(lambda f: f["event"] in ("pusher:signin_success", "pusher:error"))
