"""An async Python client, so that a test suite can wait for a run instead of polling it.

    async with connect("ws://127.0.0.1:8000/ws", token) as client:
        async for state in client.watch("run:42"):
            print(state["data"]["status"])
        # the loop ends when the subscription ends (`client.ended["run:42"]` tells why)

One socket carries every subscription; a reader task owned by the context routes frames
to per-channel queues (bounded: a consumer that falls behind slows the socket down, and
the server then keeps only the newest state for it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

QUEUE_SIZE = 1024


class OpsPushError(Exception):
    """An `error` frame from the server, or the socket closing under a subscription."""

    def __init__(self, code: str | int, message: str, ch: str | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.ch = ch


class Client:
    def __init__(self, connection: ClientConnection, welcome: dict[str, Any]) -> None:
        self.connection = connection
        self.user_id: int = welcome["user_id"]
        self.expires_at: str = welcome["expires_at"]
        self.ended: dict[str, str] = {}  # channel -> end reason
        self.errors: list[dict[str, Any]] = []  # error frames not tied to a watched channel
        self.close_code: int | None = None
        self._queues: dict[str, asyncio.Queue[dict[str, Any] | None]] = {}
        self._reader = asyncio.create_task(self._read(), name="opspush-client-reader")

    async def send(self, frame: dict[str, Any]) -> None:
        await self.connection.send(json.dumps(frame))

    async def watch(self, ch: str) -> AsyncIterator[dict[str, Any]]:
        """Subscribe and yield each `state` frame until the subscription ends."""
        queue = self._queues.setdefault(ch, asyncio.Queue(QUEUE_SIZE))
        await self.send({"op": "subscribe", "ch": ch})
        try:
            while True:
                frame = await queue.get()
                if frame is None:
                    raise OpsPushError(self.close_code or 1006, "connection closed", ch)
                kind = frame.get("type")
                if kind == "state":
                    yield frame
                elif kind == "end":
                    self.ended[ch] = frame.get("reason", "")
                    return
                elif kind == "error":
                    raise OpsPushError(frame["code"], frame.get("message", ""), ch)
        finally:
            if self._queues.get(ch) is queue:
                del self._queues[ch]
            if ch not in self.ended and self.close_code is None:
                with contextlib.suppress(ConnectionClosed):
                    await self.send({"op": "unsubscribe", "ch": ch})  # left the loop early

    async def pause(self, ch: str | None = None, reason: str = "hidden") -> None:
        await self.send({"op": "pause", "reason": reason, **({"ch": ch} if ch else {})})

    async def resume(self, ch: str | None = None) -> None:
        await self.send({"op": "resume", **({"ch": ch} if ch else {})})

    async def _read(self) -> None:
        try:
            async for message in self.connection:
                frame = json.loads(message)
                ch = frame.get("ch")
                if frame.get("type") == "end" and isinstance(ch, str):
                    self.ended[ch] = frame.get("reason", "")
                queue = self._queues.get(ch) if isinstance(ch, str) else None
                if queue is None:
                    if frame.get("type") == "error":
                        self.errors.append(frame)
                    continue
                await queue.put(frame)
        except ConnectionClosed:
            pass
        finally:
            self.close_code = self.connection.close_code
            for queue in self._queues.values():
                with contextlib.suppress(asyncio.QueueFull):
                    queue.put_nowait(None)

    async def aclose(self) -> None:
        await self.connection.close()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


@contextlib.asynccontextmanager
async def connect(url: str, token: str, **options: Any) -> AsyncIterator[Client]:
    """Open a socket, say hello, and yield a Client; everything is closed on exit."""
    options.setdefault("max_size", 16 * 2**20)  # a wall can be large
    async with ws_connect(url, **options) as connection:
        await connection.send(json.dumps({"op": "hello", "token": token}))
        try:
            welcome = json.loads(await connection.recv())
        except ConnectionClosed as closed:
            code = connection.close_code or 1006
            raise OpsPushError(code, "handshake refused") from closed
        client = Client(connection, welcome)
        try:
            yield client
        finally:
            await client.aclose()
