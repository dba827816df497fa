"""`/ws`: one viewer's connection, driven by callbacks (see connection.py): no task.

The frames a viewer sends are handled as they arrive (subscribing and its friends never
wait); an idle viewer therefore costs no task at all: the only one is the hello's, while
its user's access facts load.

Sending has no task either. The engine drops frames into the viewer's `Outbox`, which
writes a state straight to the transport when nothing waits before it and the peer keeps
up: the frame is encoded once per channel (`wire_text`, shared by all its viewers) and
written without a task switch. When the peer reads slowly the transport pauses us; frames
then wait in the outbox, states conflated per channel, until `drained` empties it; a peer
that stays paused for the send timeout is closed with 4429 and its connection reset.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from websockets.frames import Frame
from websockets.http11 import Request

from ..core import protocol
from ..core.auth import Identity, InvalidToken, verify_token
from ..core.channels import Channel, Kind
from ..core.protocol import CLOSE_TOO_MANY, ProtocolError
from ..engine.outbox import Outbox
from .connection import FrameConnection, FrameLimits, wire_text

if TYPE_CHECKING:
    from ..service import Service

log = logging.getLogger("opspush.websocket")

CLOSE_TRY_AGAIN = 1013  # the database did not answer during the hello


class ViewerConnection(FrameConnection):
    """One `/ws` socket, from the upgrade request to the end; the engine's Viewer."""

    def __init__(self, server_state: Any, *, service: Service) -> None:
        settings = service.settings
        limits = FrameLimits(
            settings.frame_rate, settings.frame_burst, settings.max_fragments, CLOSE_TOO_MANY
        )
        super().__init__(
            server_state,
            max_size=settings.max_frame_bytes,
            ping_interval=settings.ping_interval,
            limits=limits,
        )
        self.service = service
        self.settings = settings
        self.identity: Identity | None = None
        # Errors and ends are bounded by what the client may ask for; states by subscriptions.
        self.outbox = Outbox(
            2 * settings.max_subscriptions + settings.rate_burst,
            wake=self._flush,
            direct=self._send_now,
        )
        self.channels: set[Channel] = set()
        self.limiter = protocol.RateLimiter(
            settings.rate_per_second, settings.rate_burst, time.monotonic()
        )
        self._backlog: list[Frame] = []  # frames that came during the hello's facts load
        self._hello: asyncio.Task[None] | None = None
        self._deadline: asyncio.TimerHandle | None = None  # the hello's, or the send timeout
        self._expiry: asyncio.TimerHandle | None = None
        self._holds: list[contextlib.AbstractContextManager[bool]] = []

    # -- the engine's Viewer ---------------------------------------------------------------

    @property
    def user_id(self) -> int | None:
        return None if self.identity is None else self.identity.user_id

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
        if not self._hold(service.track_address(address)) or not service.admit():
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

    def blocked(self) -> None:
        if self._deadline is None and self.identity is not None:
            loop = asyncio.get_running_loop()
            self._deadline = loop.call_later(self.settings.send_timeout, self._stalled)

    def drained(self) -> None:
        self._cancel_deadline()
        self._flush()

    def close(self, code: int) -> None:
        self._leave_engine()
        self._cancel_deadline()
        if self._hello is not None and self.transport is not None and not self.gone:
            # Its answer no longer matters; the peer's close frame does.
            self._hello.cancel()
            self._hello = None
            self.transport.resume_reading()
        super().close(code)

    def ended(self) -> None:
        for handle in (self._deadline, self._expiry):
            if handle is not None:
                handle.cancel()
        self._deadline = self._expiry = None
        if self._hello is not None:
            self._hello.cancel()
        self._leave_engine()
        holds, self._holds = self._holds, []
        for hold in reversed(holds):
            hold.__exit__(None, None, None)

    # -- the hello -------------------------------------------------------------------------

    def _first_message(self, text: str | None) -> None:
        if self._hello is not None or self._deadline is None:
            return  # the hello is being decided, or the socket is closing
        self._cancel_deadline()
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
            self.close(CLOSE_TRY_AGAIN)
            return
        self._hello = None
        if not self.open():
            return  # closed meanwhile (a shutdown, say)
        if not facts.exists:
            self.close(protocol.CLOSE_UNAUTHENTICATED)
            return
        self.identity = identity
        if not self._hold(self.service.track_session(self)):
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

    # -- outgoing --------------------------------------------------------------------------

    def _flush(self) -> None:
        """Write what the outbox holds while the transport takes it (the outbox's wake-up)."""
        outbox = self.outbox
        if outbox.overflowed:
            self.close(protocol.CLOSE_TOO_MANY)
            return
        transport = self.transport
        if transport is None or self.identity is None:
            return
        while self.writable and self.open():
            item = outbox.pop()
            if item is None:
                return
            if isinstance(item, int):
                self.close(item)
                return
            transport.write(wire_text(item))

    def _send_now(self, frame: str) -> bool:
        """A state with nothing queued before it: written now if the socket takes it."""
        if self.writable and self.identity is not None and self.open():
            self.transport.write(wire_text(frame))  # type: ignore[union-attr]
            return True
        return False

    def _stalled(self) -> None:
        """It read nothing for the send timeout: try a close, then reset the connection."""
        self._deadline = None
        log.info("closing a viewer that read nothing for %.0f s", self.settings.send_timeout)
        self.close(protocol.CLOSE_TOO_MANY)
        log.info("aborting the connection of a viewer that reads nothing")
        self.abort()

    # -- helpers ---------------------------------------------------------------------------

    def _hold(self, hold: contextlib.AbstractContextManager[bool]) -> bool:
        """Enter a limit's place (released in `ended`); False when it is full."""
        if hold.__enter__():
            self._holds.append(hold)
            return True
        hold.__exit__(None, None, None)
        return False

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _leave_engine(self) -> None:
        if self.channels:
            channels, self.channels = self.channels, set()
            self.service.engine.drop_viewer(self, channels)


def connection_factory(service_of: Callable[[], Service | None]) -> Callable[..., Any]:
    """What uvicorn calls for an upgrade to `/ws` (see `deadline.py`)."""

    def create(config: Any, server_state: Any, app_state: Any) -> ViewerConnection:
        service = service_of()
        assert service is not None, "the service starts before uvicorn serves"
        return ViewerConnection(server_state, service=service)

    return create
