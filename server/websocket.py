"""`/ws`: one authenticated viewer, any number of subscriptions (protocol.md).

A session is two tasks with one owner: a reader that parses client frames and tells the
engine, and a sender that drains the viewer's outbox into the socket. Whichever ends first
ends the session; the other is cancelled, the engine forgets the viewer, and the socket is
closed with the code the protocol gives.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from starlette.websockets import WebSocket, WebSocketDisconnect

from . import protocol
from .auth import Identity, InvalidToken, verify_token
from .channels import Channel, Kind
from .closing import abort_connection, close_quietly
from .outbox import Outbox
from .protocol import ProtocolError

if TYPE_CHECKING:
    from .service import Service

log = logging.getLogger("opspush.websocket")

CLOSE_TRY_AGAIN = 1013  # the database did not answer during the handshake


class Session:
    """One open socket, seen by the engine as a Viewer."""

    def __init__(self, websocket: WebSocket, service: Service, identity: Identity) -> None:
        settings = service.settings
        self.websocket = websocket
        self.service = service
        self.identity = identity
        self.user_id = identity.user_id
        # Errors and ends are bounded by what the client may ask for; states by subscriptions.
        self.outbox = Outbox(control_limit=2 * settings.max_subscriptions + settings.rate_burst)
        self.channels: set[Channel] = set()
        self.stalled = False  # it stopped reading: its connection is reset after the close
        self.limiter = protocol.RateLimiter(
            settings.rate_per_second, settings.rate_burst, time.monotonic()
        )

    # -- the Viewer protocol -------------------------------------------------------------

    def subscription_closed(self, ch: str, *, ended: bool) -> None:
        self.channels = {c for c in self.channels if c.name != ch}
        if ended and not self.channels:
            self.outbox.close_after_flush(protocol.CLOSE_ENDED)

    # -- running -------------------------------------------------------------------------

    async def run(self) -> int | None:
        """Serve until the peer leaves or a close is due; return the close code to send."""
        reader = asyncio.create_task(self._read_loop(), name=f"ws-read-{self.user_id}")
        sender = asyncio.create_task(self._send_loop(), name=f"ws-send-{self.user_id}")
        expires_in = max(0.0, self.identity.expires_at - time.time())
        try:
            done, _ = await asyncio.wait(
                {reader, sender}, timeout=expires_in, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for task in (reader, sender):
                task.cancel()
            await asyncio.gather(reader, sender, return_exceptions=True)
            self.service.engine.drop_viewer(self, self.channels)
            self.channels.clear()
        if not done:
            return protocol.CLOSE_UNAUTHENTICATED  # the token expired on an open socket
        task = done.pop()
        if task.cancelled() or task.exception() is not None:
            if not task.cancelled():
                log.error("session task failed", exc_info=task.exception())
            return 1011
        return task.result()

    async def _read_loop(self) -> int | None:
        max_bytes = self.service.settings.max_frame_bytes
        while True:
            message = await self.websocket.receive()
            if message["type"] == "websocket.disconnect":
                return None
            text = message.get("text")
            if text is None:
                if len(message.get("bytes") or b"") > max_bytes:
                    return protocol.CLOSE_TOO_BIG
            elif len(text) > max_bytes and len(text.encode()) > max_bytes:
                return protocol.CLOSE_TOO_BIG
            # Every frame counts, text or binary: a flood of either is the same flood.
            if not self.limiter.allow(time.monotonic()):
                if self.limiter.exhausted:
                    return protocol.CLOSE_TOO_MANY
                self._error(None, "rate_limited", "too many frames; slow down")
                continue
            if text is None:
                self._error(None, "bad_request", "frames must be UTF-8 JSON text")
                continue
            try:
                self._handle(protocol.parse_frame(text))
            except ProtocolError as error:
                self._error(error.ch, error.code, error.message)
            if self.outbox.overflowed:
                return protocol.CLOSE_TOO_MANY

    async def _send_loop(self) -> int | None:
        timeout = self.service.settings.send_timeout
        code, self.stalled = await send_from_outbox(
            self.websocket, self.outbox, timeout, protocol.CLOSE_TOO_MANY
        )
        return code

    def _handle(self, command: protocol.Command) -> None:
        engine = self.service.engine
        match command:
            case protocol.Subscribe(channel):
                if channel in self.channels:
                    return
                if len(self.channels) >= self.service.settings.max_subscriptions:
                    self._error(
                        channel.name, "too_many_subscriptions", "subscription limit reached"
                    )
                    return
                granted = self.identity.channels
                if granted is not None and (
                    channel.name not in granted or channel.kind is Kind.WALL
                ):
                    # The host decided this token's channels; walls are filtered per user.
                    self._error(channel.name, "forbidden", "not granted by this token")
                    return
                self.channels.add(channel)
                self.outbox.cancel_close()
                engine.subscribe(self, channel, granted=granted is not None)
            case protocol.Unsubscribe(channel):
                if channel in self.channels:
                    self.channels.discard(channel)
                    engine.unsubscribe(self, channel)
            case protocol.Pause(channel, _reason):
                for target in self._targets(channel):
                    engine.pause(self, target)
            case protocol.Resume(channel):
                for target in self._targets(channel):
                    engine.resume(self, target)
            case protocol.Hello():
                self._error(None, "bad_request", "already authenticated")

    def _targets(self, channel: Channel | None) -> list[Channel]:
        if channel is None:
            return list(self.channels)
        return [channel] if channel in self.channels else []

    def _error(self, ch: str | None, code: protocol.ErrorCode, message: str) -> None:
        self.service.stats.errors[code] += 1
        self.outbox.put(protocol.error_frame(ch, code, message))


async def websocket_endpoint(websocket: WebSocket) -> None:
    service: Service = websocket.app.state.service
    if not service.origin_allowed(websocket.headers.get("origin"), websocket.headers.get("host")):
        await websocket.close(code=1008)  # before accept: the server answers HTTP 403
        return
    if service.draining:
        await websocket.close(code=protocol.CLOSE_RESTARTING)
        return
    address = service.client_address(websocket)
    try:
        await websocket.accept()
    except WebSocketDisconnect:
        return  # the peer left during the handshake
    code: int | None = None
    with service.track_address(address) as admitted:
        if not admitted or not service.admit():
            code = protocol.CLOSE_TOO_MANY
        else:
            code = await _serve(websocket, service)
    if code is not None:
        await close_quietly(websocket, code)


async def _serve(websocket: WebSocket, service: Service) -> int | None:
    identity_or_code = await _handshake(websocket, service)
    if isinstance(identity_or_code, int) or identity_or_code is None:
        return identity_or_code
    identity = identity_or_code
    session = Session(websocket, service, identity)
    with service.track_session(session) as admitted:
        if not admitted:
            return protocol.CLOSE_TOO_MANY
        try:
            await websocket.send_text(
                protocol.welcome_frame(identity.user_id, identity.expires_at_iso)
            )
        except WebSocketDisconnect:
            return None  # the peer left before its welcome
        code = await session.run()
    if session.stalled and code is not None:
        # Its receive window is shut: the close frame may never leave our buffer, and the
        # connection with it. Try, then reset it rather than hold it open indefinitely.
        await close_quietly(websocket, code)
        abort_connection(websocket)
        return None
    return code


async def _handshake(websocket: WebSocket, service: Service) -> Identity | int | None:
    settings = service.settings
    try:
        async with asyncio.timeout(settings.hello_timeout):
            message = await websocket.receive()
    except TimeoutError:
        return protocol.CLOSE_HELLO_TIMEOUT
    if message["type"] == "websocket.disconnect":
        return None
    text = message.get("text")
    if text is None or len(text) > settings.max_frame_bytes:
        return protocol.CLOSE_UNAUTHENTICATED
    try:
        command = protocol.parse_frame(text)
    except ProtocolError:
        return protocol.CLOSE_UNAUTHENTICATED
    if not isinstance(command, protocol.Hello):
        return protocol.CLOSE_UNAUTHENTICATED
    try:
        identity = verify_token(
            command.token,
            settings.secret,
            max_ttl=settings.max_token_ttl,
            max_channel_ttl=settings.max_channel_token_ttl,
        )
    except InvalidToken as error:
        log.info("refused a token: %s", error)  # the reason only; never the token
        return protocol.CLOSE_UNAUTHENTICATED
    try:
        facts = await service.engine.user_facts(identity.user_id)
    except TimeoutError:
        return CLOSE_TRY_AGAIN
    if not facts.exists:
        return protocol.CLOSE_UNAUTHENTICATED
    return identity


async def send_from_outbox(
    websocket: WebSocket, outbox: Outbox, send_timeout: float, overflow_code: int
) -> tuple[int | None, bool]:
    """Drain a viewer's outbox into its socket until a close is due (both endpoints' sender).

    Returns the close code to send (None: the peer left) and whether the peer stopped
    reading for `send_timeout` (its connection is then reset after the close is tried).
    """
    while True:
        await outbox.ready.wait()
        item = outbox.pop()
        if item is None:
            continue
        if isinstance(item, int):
            return item, False
        if outbox.overflowed:
            return overflow_code, False
        try:
            async with asyncio.timeout(send_timeout):
                await websocket.send_text(item)
        except TimeoutError:
            log.info("closing a viewer that read nothing for %.0f s", send_timeout)
            return overflow_code, True
        except WebSocketDisconnect:
            return None, False  # the peer left while a frame was on its way: not an error
