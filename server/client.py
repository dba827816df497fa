"""An async Python client, so that a test suite can wait for a run instead of polling it.

    async with connect("ws://127.0.0.1:8000/ws", token) as client:
        async for state in client.watch("run:42"):
            print(state["data"]["status"])
        # the loop ends when the subscription ends (`client.ended["run:42"]` tells why)
        async for state in client.watch("run:43"):  # and the next one, on the same client
            ...

One socket carries every subscription; a reader task routes its frames to per-channel
queues (bounded: a consumer that falls behind slows the socket down, and the server then
keeps only the newest state for it). The server closes a socket with 4000 once its last
subscription has ended (protocol.md); the next `watch` then opens a new socket and says
hello again with the same token, so one `connect()` serves any number of watches, one after
another or at once. Every error is an `OpsPushError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, Final

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

QUEUE_SIZE: Final = 1024
CLOSE_ENDED: Final = 4000  # the socket's last subscription ended (protocol.md)
# A subscription lost to a 4000 close before the server took it is sent again on a new
# socket; this many times in a row at most, so that a server that keeps doing it is an error.
RESUBSCRIBE_ATTEMPTS: Final = 5


class OpsPushError(Exception):
    """An `error` frame from the server, a refused connection, or the socket closing under
    a subscription. `code` is the protocol's error code (a string), a close code or an HTTP
    status (an int), or `unreachable`, `closed` or `already_watched` from the client itself."""

    def __init__(self, code: str | int, message: str, ch: str | None = None) -> None:
        super().__init__(f"{code}: {message}" if ch is None else f"{ch}: {code}: {message}")
        self.code = code
        self.message = message
        self.ch = ch


class _Socket:
    """One WebSocket after its welcome: the queues of the watches it carries, and its reader."""

    def __init__(self, connection: ClientConnection, client: Client) -> None:
        self.connection = connection
        self.queues: dict[str, asyncio.Queue[dict[str, Any] | None]] = {}
        self.closed = False
        self._client = client
        self.reader = asyncio.create_task(self._read(), name="opspush-client-reader")

    @property
    def close_code(self) -> int:
        return self.connection.close_code or 1006

    async def send(self, frame: dict[str, Any]) -> None:
        await self.connection.send(json.dumps(frame))

    async def _read(self) -> None:
        try:
            async for message in self.connection:
                frame = json.loads(message)
                ch = frame.get("ch")
                if frame.get("type") == "end" and isinstance(ch, str):
                    self._client.ended[ch] = frame.get("reason", "")
                queue = self.queues.get(ch) if isinstance(ch, str) else None
                if queue is None:
                    if frame.get("type") == "error":
                        self._client.errors.append(frame)
                    continue
                await queue.put(frame)
        except ConnectionClosed:
            pass
        finally:
            self.closed = True
            self._client.close_code = self.connection.close_code
            # A full queue gets no None: its watch sees `closed` once it has drained it.
            for queue in self.queues.values():
                with contextlib.suppress(asyncio.QueueFull):
                    queue.put_nowait(None)

    async def aclose(self) -> None:
        await self.connection.close()
        self.reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.reader


class Client:
    def __init__(self, url: str, token: str, options: dict[str, Any]) -> None:
        self.url = url
        self.token = token
        self.user_id: int = 0  # from the latest welcome
        self.expires_at: str = ""
        self.ended: dict[str, str] = {}  # channel -> end reason
        self.errors: list[dict[str, Any]] = []  # error frames not tied to a watched channel
        self.close_code: int | None = None  # of the latest socket to close
        self._options = options
        self._socket: _Socket | None = None
        self._opening = asyncio.Lock()
        self._closed = False
        self._watching: set[str] = set()

    @property
    def connection(self) -> ClientConnection | None:
        """The current socket, or None before the first or after one closed."""
        return None if self._socket is None or self._socket.closed else self._socket.connection

    async def open(self) -> None:
        """Have a socket that said hello: the current one, or a new one."""
        await self._open()

    async def _open(self) -> _Socket:
        async with self._opening:  # concurrent watches share the new socket
            if self._closed:
                raise OpsPushError("closed", "the client is closed")
            if self._socket is not None and not self._socket.closed:
                return self._socket
            if self._socket is not None:
                await self._socket.aclose()
            self._socket = await self._handshake()
            return self._socket

    async def _handshake(self) -> _Socket:
        try:
            connection = await ws_connect(self.url, **self._options)
        except InvalidStatus as refused:
            status = refused.response.status_code
            raise OpsPushError(status, f"{self.url} refused the WebSocket handshake") from None
        except (OSError, InvalidURI, InvalidHandshake) as error:
            raise OpsPushError("unreachable", f"cannot connect to {self.url}: {error}") from None
        try:
            await connection.send(json.dumps({"op": "hello", "token": self.token}))
            welcome = json.loads(await connection.recv())
        except ConnectionClosed:
            code = connection.close_code or 1006
            await connection.close()
            raise OpsPushError(code, "handshake refused") from None
        if not isinstance(welcome, dict) or welcome.get("type") != "welcome":
            await connection.close()
            raise OpsPushError("bad_request", f"expected a welcome, not {welcome!r}")
        self.user_id = welcome["user_id"]
        self.expires_at = welcome["expires_at"]
        return _Socket(connection, self)

    async def send(self, frame: dict[str, Any]) -> None:
        """Send a frame on the current socket (a new one if it had closed)."""
        socket = await self._open()
        try:
            await socket.send(frame)
        except ConnectionClosed:
            raise OpsPushError(socket.close_code, "connection closed") from None

    async def watch(self, ch: str) -> AsyncIterator[dict[str, Any]]:
        """Subscribe and yield each `state` frame until the subscription ends."""
        # The server takes a second subscribe of a channel as a no-op: no state would come.
        if ch in self._watching:
            raise OpsPushError("already_watched", "this client watches it already", ch)
        self._watching.add(ch)
        try:
            async with contextlib.aclosing(self._watch(ch)) as frames:  # its unsubscribe now
                async for frame in frames:
                    yield frame
        finally:
            self._watching.discard(ch)

    async def _watch(self, ch: str) -> AsyncGenerator[dict[str, Any], None]:
        self.ended.pop(ch, None)  # a channel watched again ends anew
        last: dict[str, Any] | None = None
        for _ in range(RESUBSCRIBE_ATTEMPTS):
            socket = await self._open()
            queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(QUEUE_SIZE)
            socket.queues[ch] = queue
            done = False
            try:
                with contextlib.suppress(ConnectionClosed):  # then the reader's None says why
                    await socket.send({"op": "subscribe", "ch": ch})
                while True:
                    frame = None if queue.empty() and socket.closed else await queue.get()
                    if frame is None:
                        break
                    kind = frame.get("type")
                    if kind == "state":
                        if last is not None and frame.get("data") == last.get("data"):
                            continue  # the state a new socket sends at once, seen already
                        last = frame
                        yield frame
                    elif kind == "end":
                        done = True
                        return
                    elif kind == "error":
                        done = True
                        raise OpsPushError(frame["code"], frame.get("message", ""), ch)
            finally:
                if socket.queues.get(ch) is queue:
                    del socket.queues[ch]
                while not queue.empty():  # a reader waiting to put into it goes on
                    queue.get_nowait()
                if not done and not socket.closed:
                    with contextlib.suppress(ConnectionClosed):
                        await socket.send({"op": "unsubscribe", "ch": ch})  # left the loop early
            if socket.close_code != CLOSE_ENDED:
                raise OpsPushError(socket.close_code, "connection closed", ch)
            # 4000 without our `end`: the socket's other subscriptions ended before the
            # server took ours. Subscribe again, on a new socket.
        raise OpsPushError(CLOSE_ENDED, "the server kept closing the socket", ch)

    async def pause(self, ch: str | None = None, reason: str = "hidden") -> None:
        await self._send_if_open({"op": "pause", "reason": reason, **({"ch": ch} if ch else {})})

    async def resume(self, ch: str | None = None) -> None:
        await self._send_if_open({"op": "resume", **({"ch": ch} if ch else {})})

    async def _send_if_open(self, frame: dict[str, Any]) -> None:
        # A closed socket watches nothing: there is nothing to pause or resume.
        socket = self._socket
        if socket is not None and not socket.closed:
            with contextlib.suppress(ConnectionClosed):
                await socket.send(frame)

    async def aclose(self) -> None:
        async with self._opening:
            self._closed = True
            if self._socket is not None:
                await self._socket.aclose()


@contextlib.asynccontextmanager
async def connect(url: str, token: str, **options: Any) -> AsyncIterator[Client]:
    """Open a socket, say hello, and yield a Client; everything is closed on exit."""
    options.setdefault("max_size", 16 * 2**20)  # a wall can be large
    client = Client(url, token, options)
    await client.open()  # a bad token or address is refused here, not at the first watch
    try:
        yield client
    finally:
        await client.aclose()
