"""`/ws`: one viewer's connection, driven by callbacks (see connection.py): no task.

The frames a viewer sends are handled as they arrive (subscribing and its friends never
wait); an idle viewer therefore costs no task at all: the only one is the hello's, while
its user's access facts load.

Sending has no task either: see engine_socket.py (the outbox, backpressure and the send
timeout, shared with the Pusher endpoint); a `/ws` viewer that reads nothing for the send
timeout is closed with 4429 and its connection reset.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

from websockets.frames import Frame
from websockets.http11 import Request

from ..core import protocol
from ..core.auth import Identity, InvalidToken, verify_token
from ..core.channels import Channel, Kind
from ..core.protocol import CLOSE_TOO_MANY, ProtocolError
from ..database import displays
from .engine_socket import EngineSocket

if TYPE_CHECKING:
    from ..service import Service

log = logging.getLogger("opspush.websocket")

CLOSE_TRY_AGAIN = 1013  # the database did not answer during the hello


class ViewerConnection(EngineSocket):
    """One `/ws` socket, from the upgrade request to the end; the engine's Viewer."""

    def __init__(self, server_state: Any, *, service: Service) -> None:
        super().__init__(server_state, service=service, too_many=CLOSE_TOO_MANY)
        self.identity: Identity | None = None
        self._backlog: list[Frame] = []  # frames that came during the hello's facts load
        self._hello: asyncio.Task[None] | None = None
        self._expiry: asyncio.TimerHandle | None = None

    # -- the engine's Viewer ---------------------------------------------------------------

    @property
    def user_id(self) -> int | None:
        return None if self.identity is None else self.identity.user_id

    @property
    def display_id(self) -> int | None:
        """The wall display this socket signed in as (docs/displays.md), if any."""
        return None if self.identity is None else self.identity.display_id

    @property
    def sending(self) -> bool:
        return self.identity is not None  # nothing goes out before the welcome

    def subscription_closed(self, ch: str, *, ended: bool) -> None:
        self.channels = {c for c in self.channels if c.name != ch}
        if ended and not self.channels:
            self.outbox.close_after_flush(protocol.CLOSE_ENDED)

    def terminate(self) -> None:
        # 4401: the client may come back only with a new token, which the host now controls.
        self.close(protocol.CLOSE_UNAUTHENTICATED)

    # -- the connection's hooks ------------------------------------------------------------

    def refuse(self, request: Request) -> tuple[int, str] | None:
        headers = request.headers
        # get_all, not get: `get` raises on a repeated header (an ERROR and two tracebacks).
        refusal = self.service.upgrade_refusal(headers.get_all("origin"), headers.get_all("host"))
        if refusal is not None:
            return refusal
        if self.service.draining:
            return 403, "Restarting"
        return None

    def opened(self, request: Request) -> None:
        service = self.service
        address = service.client_address(self.peer, request.headers.get_all("x-forwarded-for"))
        if not self.hold(service.track_address(address)) or not service.admit():
            self.close(protocol.CLOSE_TOO_MANY)
            return
        loop = asyncio.get_running_loop()
        self._deadline = loop.call_later(self.settings.hello_timeout, self._hello_late)

    def frame(self, frame: Frame) -> None:
        if self._hello is not None:
            self._backlog.append(frame)  # handled in order once the hello is done
        else:
            super().frame(frame)

    def received(self, data: bytes, text: str | None) -> None:
        if self.identity is None:
            self._first_message(text)
            return
        if len(data) > self.settings.max_frame_bytes:
            self.close(protocol.CLOSE_TOO_BIG)
            return
        # Every frame counts, text or binary: a flood of either is the same flood.
        if not self.limiter.allow(time.monotonic()):
            if self.limiter.exhausted:
                self.close(protocol.CLOSE_TOO_MANY)
            else:
                self._error(None, "rate_limited", "too many frames; slow down")
            return
        if text is None:
            self._error(None, "bad_request", "frames must be UTF-8 JSON text")
            return
        try:
            self._handle(protocol.parse_frame(text))
        except ProtocolError as error:
            self._error(error.ch, error.code, error.message)

    def close(self, code: int) -> None:
        if self._hello is not None and self.transport is not None and not self.gone:
            # Its answer no longer matters; the peer's close frame does.
            self._hello.cancel()
            self._hello = None
            self.transport.resume_reading()
        super().close(code)

    def ended(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        if self._hello is not None:
            self._hello.cancel()
        super().ended()

    # -- the hello -------------------------------------------------------------------------

    def _first_message(self, text: str | None) -> None:
        if self._hello is not None or self._deadline is None:
            return  # the hello is being decided, or the socket is closing
        self.cancel_deadline()
        settings = self.settings
        command = None
        if text is not None and len(text) <= settings.max_frame_bytes:
            with contextlib.suppress(ProtocolError):
                command = protocol.parse_frame(text)
        if not isinstance(command, protocol.Hello):
            self.close(protocol.CLOSE_UNAUTHENTICATED)
            return
        try:
            identity = verify_token(
                command.token,
                settings.secret,
                max_ttl=settings.max_token_ttl,
                max_channel_ttl=settings.max_channel_token_ttl,
            )
        except InvalidToken as error:
            log.info("refused a token: %s", error)  # the reason only; never the token
            self.close(protocol.CLOSE_UNAUTHENTICATED)
            return
        assert self.transport is not None
        self.transport.pause_reading()  # what follows the hello waits for its answer
        self._hello = asyncio.get_running_loop().create_task(
            self._authenticate(identity), name="ws-hello"
        )

    async def _authenticate(self, identity: Identity) -> None:
        try:
            facts = await self.service.engine.user_facts(identity.user_id)
        except TimeoutError:
            self._hello = None
            if self.transport is not None and not self.gone:
                # Reading was paused for the hello: the peer's answer to our close is read,
                # or the close takes 5 s more to give up on (and the peer sees it that late).
                self.transport.resume_reading()
            self.close(CLOSE_TRY_AGAIN)
            return
        self._hello = None
        if not self.open():
            return  # closed meanwhile (a shutdown, say)
        if not facts.exists or not await self._display_active(identity):
            self.close(protocol.CLOSE_UNAUTHENTICATED)
            return
        self.identity = identity
        if not self.hold(self.service.track_session(self)):
            self.identity = None
            self.close(protocol.CLOSE_TOO_MANY)
            return
        self.send_text(protocol.welcome_frame(identity.user_id, identity.expires_at_iso))
        loop = asyncio.get_running_loop()
        expires_in = max(0.0, identity.expires_at - time.time())
        # The token expired on an open socket.
        self._expiry = loop.call_later(expires_in, self.close, protocol.CLOSE_UNAUTHENTICATED)
        backlog, self._backlog = self._backlog, []
        for frame in backlog:
            self.frame(frame)
        self.send_pending()
        if self.transport is not None and not self.gone:
            self.transport.resume_reading()

    async def _display_active(self, identity: Identity) -> bool:
        """A display's token works only while the display is not revoked: checked at every
        hello, since a revocation must stop its tokens at once, not at their expiry."""
        if identity.display_id is None:
            return True
        try:
            active = await displays.is_active(self.service.pool, identity.display_id)
        except Exception as error:  # the database did not answer: the client comes back
            log.info("could not check display %d: %s", identity.display_id, error)
            active = False
        # A revocation noticed while the check ran: the check may have read before it.
        revoked = identity.display_id in self.service.revoked_displays
        return active and not revoked and self.open()

    def _hello_late(self) -> None:
        self._deadline = None
        self.close(protocol.CLOSE_HELLO_TIMEOUT)

    # -- commands --------------------------------------------------------------------------

    def _handle(self, command: protocol.Command) -> None:
        engine = self.service.engine
        assert self.identity is not None
        match command:
            case protocol.Subscribe(channel):
                if channel in self.channels:
                    return
                if len(self.channels) >= self.settings.max_subscriptions:
                    self._error(
                        channel.name, "too_many_subscriptions", "subscription limit reached"
                    )
                    return
                wall = self.identity.wall_id
                if wall is not None and channel != Channel(Kind.WALL, wall):
                    self._error(channel.name, "forbidden", "a display watches its wall only")
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
