"""`/app/{key}?protocol=7`: one Pusher Channels connection, seen by the engine as a Viewer.

It shares everything with `/ws` but the words: the engine, the outbox, the rate limiter,
the Origin check, the per-address and admission limits, the close and abort handling. The
engine's frames are translated by `PusherOutbox`; the host's own events come from the hub.

A connection that did not sign in has no user: the host's channel signature is the whole
authorization, so its opspush subscriptions are granted. After `pusher:signin` it has the
user's id, and its new subscriptions are decided (and re-checked) on domain.md's rules.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from starlette.responses import PlainTextResponse
from starlette.websockets import WebSocket, WebSocketDisconnect

from ..core import protocol
from ..core.channels import Channel, Kind
from ..engine.outbox import Outbox
from . import protocol as pusher
from .asgi import abort_connection, close_quietly, send_from_outbox
from .hub import PusherHub
from .protocol import PusherError

if TYPE_CHECKING:
    from ..service import Service

log = logging.getLogger("opspush.pusher")

HOST_EVENT_BACKLOG = 1000  # the host's events waiting for one slow socket; beyond: 4100

# A socket id must be unguessable: the host excludes a sender by it and a channel signature
# is bound to it. Two random parts keep Pusher's `<digits>.<digits>` (Laravel's and Pusher's
# server libraries check that shape); 80 random bits make a repeat on any process negligible.
_SOCKET_ID_PART = 10**12


def new_socket_id() -> str:
    first = secrets.randbelow(_SOCKET_ID_PART) + 1
    return f"{first}.{secrets.randbelow(_SOCKET_ID_PART) + 1}"


class PusherOutbox(Outbox):
    """The engine's protocol.md frames, put in Pusher's words.

    The first state of a subscription is preceded by `subscription_succeeded`; `send` is
    for frames already in Pusher's words.
    """

    __slots__ = ("confirmed",)

    def __init__(self, control_limit: int, wake: Callable[[], None]) -> None:
        super().__init__(control_limit, wake)
        self.confirmed: set[str] = set()  # engine channel names told subscription_succeeded

    def put_state(self, ch: str, frame: str) -> bool:
        if ch not in self.confirmed:
            self.confirmed.add(ch)
            super().put(pusher.subscription_succeeded(pusher.pusher_name(ch)))
        return super().put_state(ch, pusher.translate(frame))

    def put(self, frame: str) -> None:
        super().put(pusher.translate(frame))  # the engine's `end` and refusals

    def send(self, frame: str) -> None:
        super().put(frame)


class PusherSession:
    def __init__(self, websocket: WebSocket, service: Service, socket_id: str) -> None:
        settings = service.settings
        self.websocket = websocket
        self.service = service
        self.socket_id = socket_id
        self.user_id: int | None = None
        self.ready = asyncio.Event()  # the outbox has something for the sender
        self.frames = PusherOutbox(
            2 * settings.max_subscriptions + settings.rate_burst + HOST_EVENT_BACKLOG,
            wake=self.ready.set,
        )
        self.outbox: Outbox = self.frames  # what the engine sees
        self.own: set[Channel] = set()  # opspush's channels, through the engine
        self.host: set[str] = set()  # the host's channels, through the hub
        self.stalled = False
        self.heard = time.monotonic()
        self.limiter = protocol.RateLimiter(
            settings.rate_per_second, settings.rate_burst, time.monotonic()
        )

    @property
    def hub(self) -> PusherHub:
        assert self.service.pusher_hub is not None
        return self.service.pusher_hub

    # -- the Viewer protocol and the hub's Member ----------------------------------------

    def subscription_closed(self, ch: str, *, ended: bool) -> None:
        self.own = {c for c in self.own if c.name != ch}
        self.frames.confirmed.discard(ch)

    def send(self, frame: str) -> None:
        self.frames.send(frame)

    async def aclose(self, code: int) -> None:
        await close_quietly(self.websocket, code)

    def terminate(self) -> None:
        self.frames.send(pusher.error(pusher.UNAUTHORIZED, "connection terminated by the host"))
        self.outbox.close_after_flush(pusher.UNAUTHORIZED)

    # -- running -------------------------------------------------------------------------

    async def run(self) -> int | None:
        tasks = [
            asyncio.create_task(self._read_loop(), name=f"pusher-read-{self.socket_id}"),
            asyncio.create_task(self._send_loop(), name=f"pusher-send-{self.socket_id}"),
            asyncio.create_task(self._keepalive(), name=f"pusher-alive-{self.socket_id}"),
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.service.engine.drop_viewer(self, self.own)
            self.hub.forget(self, self.host, self.user_id)
            self.own.clear()
            self.host.clear()
        task = done.pop()
        if task.cancelled() or task.exception() is not None:
            if not task.cancelled():
                log.error("pusher session task failed", exc_info=task.exception())
            return 1011
        return task.result()

    async def _keepalive(self) -> int:
        """Ping a client silent for activity_timeout; close with 4201 if it stays silent."""
        settings = self.service.settings
        while True:
            quiet_until = self.heard + settings.pusher_activity_timeout
            await asyncio.sleep(max(0.0, quiet_until - time.monotonic()))
            if time.monotonic() < self.heard + settings.pusher_activity_timeout:
                continue
            pinged = time.monotonic()
            self.frames.send(pusher.frame("pusher:ping", "{}"))
            await asyncio.sleep(settings.pusher_pong_timeout)
            if self.heard < pinged:
                self.frames.send(pusher.error(pusher.PONG_NOT_RECEIVED, "pong reply not received"))
                return pusher.PONG_NOT_RECEIVED

    async def _read_loop(self) -> int | None:
        max_bytes = self.service.settings.max_frame_bytes
        while True:
            message = await self.websocket.receive()
            if message["type"] == "websocket.disconnect":
                return None
            self.heard = time.monotonic()
            text = message.get("text")
            if text is None:
                if len(message.get("bytes") or b"") > max_bytes:
                    return protocol.CLOSE_TOO_BIG
            elif len(text) > max_bytes and len(text.encode()) > max_bytes:
                return protocol.CLOSE_TOO_BIG
            # Every frame counts, text or binary: a flood of either is the same flood.
            if not self.limiter.allow(time.monotonic()):
                if self.limiter.exhausted:
                    return pusher.OVER_CAPACITY
                self._error(pusher.CLIENT_EVENT_REJECTED, "too many messages; slow down")
                continue
            if text is None:
                self._error(None, "frames must be UTF-8 JSON text")
                continue
            try:
                self._handle(pusher.parse_client_frame(text))
            except PusherError as error:
                self._error(None, error.message)
            if self.outbox.overflowed:
                return pusher.OVER_CAPACITY

    async def _send_loop(self) -> int | None:
        timeout = self.service.settings.send_timeout
        code, self.stalled = await send_from_outbox(
            self.websocket, self.outbox, self.ready, timeout, pusher.OVER_CAPACITY
        )
        return code

    # -- client frames -------------------------------------------------------------------

    def _handle(self, frame: pusher.ClientFrame) -> None:
        event = frame.event
        if event == "pusher:ping":
            self.frames.send(pusher.frame("pusher:pong", "{}"))
        elif event == "pusher:pong":
            pass  # being heard is all it is for
        elif event == "pusher:subscribe":
            self._subscribe(frame.data)
        elif event == "pusher:unsubscribe":
            self._unsubscribe(frame.data.get("channel"))
        elif event == "pusher:signin":
            self._signin(frame.data)
        elif event.startswith("client-"):
            self._error(pusher.CLIENT_EVENT_REJECTED, "client events are not accepted")
        else:
            self._error(None, "unknown event")

    def _subscribe(self, data: dict[str, object]) -> None:
        name = data.get("channel")
        if not pusher.valid_channel_name(name) and not (
            isinstance(name, str) and name.startswith(pusher.USER_CHANNEL)
        ):
            self._refuse(pusher.echo(name), 400, "malformed channel name")
            return
        assert isinstance(name, str)
        channel = pusher.own_channel(name)
        if name in self.host or (channel is not None and channel in self.own):
            return  # subscribing twice: the first subscription stands
        if len(self.own) + len(self.host) >= self.service.settings.max_subscriptions:
            self._refuse(name, 429, "subscription limit reached")
            return
        if name.startswith(pusher.PRESENCE):
            status = 403 if pusher.is_own(name) else 400
            self._refuse(name, status, "presence channels are not supported")
            return
        if name.startswith(pusher.USER_CHANNEL):
            if self.user_id is None or name != f"{pusher.USER_CHANNEL}{self.user_id}":
                self._refuse(name, 403, "not this connection's user")
                return
            self._join_host(name)
            return
        if not name.startswith(pusher.PRIVATE):
            if pusher.is_own(name):
                self._refuse(name, 403, "opspush channels are private: use private-" + name)
                return
            self._join_host(name)  # a public channel of the host's
            return
        settings = self.service.settings
        assert settings.pusher is not None
        if not pusher.channel_auth_ok(
            settings.pusher.key, settings.pusher.secret, self.socket_id, name, data.get("auth")
        ):
            log.info("refused a channel signature (bad, missing, or for another socket)")
            self._refuse(name, 401, "invalid channel signature")
            return
        if not pusher.is_own(name):
            self._join_host(name)
            return
        if channel is None:
            self._refuse(name, 404, "no such channel")
            return
        if channel.kind is Kind.WALL and self.user_id is None:
            self._refuse(name, 403, "a wall needs a signed-in connection (pusher:signin)")
            return
        self.own.add(channel)
        self.outbox.cancel_close()
        self.service.engine.subscribe(self, channel, granted=self.user_id is None)

    def _join_host(self, name: str) -> None:
        self.host.add(name)
        self.hub.join(self, name)
        self.frames.send(pusher.subscription_succeeded(name))

    def _unsubscribe(self, name: object) -> None:
        if not isinstance(name, str):
            return
        if name in self.host:
            self.host.discard(name)
            self.hub.leave(self, name)
            return
        channel = pusher.own_channel(name)
        if channel is not None and channel in self.own:
            self.own.discard(channel)
            self.frames.confirmed.discard(channel.name)
            self.service.engine.unsubscribe(self, channel)

    def _signin(self, data: dict[str, object]) -> None:
        settings = self.service.settings
        assert settings.pusher is not None
        if self.user_id is not None:
            self._error(None, "already signed in")
            return
        user_data = data.get("user_data")
        if not isinstance(user_data, str) or not pusher.user_auth_ok(
            settings.pusher.key, settings.pusher.secret, self.socket_id, user_data, data.get("auth")
        ):
            log.info("refused a sign-in signature")
            self.terminate()
            return
        try:
            user_id = pusher.signed_user_id(user_data)
        except PusherError as error:
            self._error(pusher.UNAUTHORIZED, error.message)
            return
        self.user_id = user_id
        self.hub.signed_in(self, user_id)
        self.frames.send(pusher.frame("pusher:signin_success", {"user_data": user_data}))

    def _refuse(self, channel: str, status: int, message: str) -> None:
        self.service.stats.errors[f"pusher_{status}"] += 1
        self.frames.send(pusher.subscription_error(channel, status, message))

    def _error(self, code: int | None, message: str) -> None:
        self.service.stats.errors["pusher_error"] += 1
        self.frames.send(pusher.error(code, message))


def _protocol_refusal(query: str | None) -> tuple[int, str] | None:
    if query is None or query == "":
        return pusher.NO_PROTOCOL, "no protocol version given"
    if not query.isascii() or not query.isdigit():
        return pusher.BAD_VERSION_FORMAT, "invalid protocol version"
    if int(query) < pusher.MIN_PROTOCOL:
        return pusher.OLD_PROTOCOL, "protocol version 7 or later is required"
    return None


async def pusher_endpoint(websocket: WebSocket) -> None:
    service: Service = websocket.app.state.service
    settings = service.settings
    denial = service.upgrade_refusal(
        websocket.headers.getlist("origin"), websocket.headers.getlist("host")
    )
    if denial is not None:
        await _deny(websocket, *denial)
        return
    if service.draining or settings.pusher is None:
        await websocket.close(code=protocol.CLOSE_RESTARTING)
        return
    address = service.client_address(
        websocket.client.host if websocket.client else None,
        websocket.headers.getlist("x-forwarded-for"),
    )
    try:
        await websocket.accept()
    except WebSocketDisconnect:
        return
    refusal: tuple[int, str] | None = None
    if websocket.path_params.get("key") != settings.pusher.key:
        refusal = pusher.APP_NOT_FOUND, "unknown app key"
    else:
        refusal = _protocol_refusal(websocket.query_params.get("protocol"))
    if refusal is not None:
        await _refuse(websocket, *refusal)
        return
    code: int | None = None
    with service.track_address(address) as admitted:
        if not admitted or not service.admit():
            await _refuse(websocket, pusher.OVER_CAPACITY, "too many connections; back off")
            return
        code = await _serve(websocket, service)
    if code is not None:
        await close_quietly(websocket, code)


async def _deny(websocket: WebSocket, status: int, text: str) -> None:
    """Refuse the upgrade with an HTTP status, before accept."""
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(PlainTextResponse(text, status_code=status))
    else:
        await websocket.close(code=1008)  # a server without the extension answers 403


async def _refuse(websocket: WebSocket, code: int, message: str) -> None:
    try:
        await websocket.send_text(pusher.error(code, message))
    except WebSocketDisconnect:
        return
    await close_quietly(websocket, code)


async def _serve(websocket: WebSocket, service: Service) -> int | None:
    session = PusherSession(websocket, service, new_socket_id())
    with service.track_session(session) as admitted:
        if not admitted:
            return pusher.OVER_CAPACITY
        try:
            await websocket.send_text(
                pusher.connection_established(
                    session.socket_id, service.settings.pusher_activity_timeout
                )
            )
        except WebSocketDisconnect:
            return None
        code = await session.run()
    if session.stalled and code is not None:
        await close_quietly(websocket, code)
        abort_connection(websocket)
        return None
    return code
