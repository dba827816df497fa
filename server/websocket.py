"""`/ws`: one viewer's connection, driven by callbacks on the websockets Sans-I/O core.

uvicorn parses the upgrade request and hands the socket over (see `deadline.py`); from then
on this `asyncio.Protocol` owns it: `data_received` feeds the websockets `ServerProtocol`,
and the frames it yields are handled at once (subscribing and its friends never wait). An
idle viewer therefore costs no task at all: the only one is the hello's, while its user's
access facts load.

Sending has no task either. The engine drops frames into the viewer's `Outbox`, whose wake-up
writes them straight to the transport while it keeps up: a state frame is encoded once per
channel (`wire_text`, shared by every viewer of the frame) and written without a task
switch. When the peer reads slowly the transport pauses us; frames then wait in the outbox,
states conflated per channel, until `resume_writing` drains it; a peer that stays paused for
the send timeout is closed with 4429 and its connection reset.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import State
from websockets.server import ServerProtocol

from . import protocol
from .auth import Identity, InvalidToken, verify_token
from .channels import Channel, Kind
from .outbox import Outbox
from .protocol import ProtocolError

if TYPE_CHECKING:
    from .service import Service

log = logging.getLogger("opspush.websocket")

CLOSE_TRY_AGAIN = 1013  # the database did not answer during the hello
CLOSE_TIMEOUT = 5.0  # how long a close handshake may take before the connection is dropped
CLOSE_INTERNAL = 1011


@functools.lru_cache(maxsize=64)
def wire_text(text: str) -> bytes:
    """A server text frame, ready for the socket: encoded once for every viewer of it."""
    return Frame(Opcode.TEXT, text.encode()).serialize(mask=False, extensions=[])


class ServerConnection(ServerProtocol):
    """The websockets library's server side, except that a close frame in the middle of a
    fragmented message closes normally (RFC 6455 5.4: control frames may come between the
    fragments) instead of failing the connection with 1002; the partial message is dropped.
    Autobahn case 7.1.5."""

    def recv_frame(self, frame: Frame) -> None:
        if frame.opcode is Opcode.CLOSE:
            self.current_size = None
        super().recv_frame(frame)


class ViewerConnection(asyncio.Protocol):
    """One `/ws` socket, from the upgrade request to the end; the engine's Viewer."""

    def __init__(self, config: Any, server_state: Any, app_state: Any, *, service: Service) -> None:
        settings = service.settings
        self.service = service
        self.settings = settings
        self._server_state = server_state
        self._default_headers: list[tuple[bytes, bytes]] = server_state.default_headers
        self.conn = ServerConnection(max_size=settings.max_frame_bytes)
        self.transport: asyncio.Transport | None = None
        self.peer: str | None = None
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
        self._fragments: list[bytes] = []
        self._fragments_text = False
        self._writable = True
        self._backlog: list[Frame] = []  # frames that came during the hello's facts load
        self._hello: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None  # hello, send or close deadline
        self._expiry: asyncio.TimerHandle | None = None
        self._ping: asyncio.TimerHandle | None = None
        self._awaiting_pong = False
        self._holds: list[contextlib.AbstractContextManager[bool]] = []
        self._closed: asyncio.Future[None] | None = None
        self._gone = False

    # -- the engine's Viewer ---------------------------------------------------------------

    @property
    def user_id(self) -> int | None:
        return None if self.identity is None else self.identity.user_id

    def subscription_closed(self, ch: str, *, ended: bool) -> None:
        self.channels = {c for c in self.channels if c.name != ch}
        if ended and not self.channels:
            self.outbox.close_after_flush(protocol.CLOSE_ENDED)

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if isinstance(peer, tuple) else None
        self._server_state.connections.add(self)

    def data_received(self, data: bytes) -> None:
        self.conn.receive_data(data)
        self._take_events()
        if self.conn.parser_exc is not None and not self._gone:
            self._broken()

    def eof_received(self) -> bool | None:
        self.conn.receive_eof()
        self._take_events()
        return None

    def pause_writing(self) -> None:
        self._writable = False
        if self._timer is None and self.identity is not None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self.settings.send_timeout, self._stalled)

    def resume_writing(self) -> None:
        self._writable = True
        self._cancel_timer()
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self._gone = True
        self._server_state.connections.discard(self)
        for handle in (self._timer, self._expiry, self._ping):
            if handle is not None:
                handle.cancel()
        self._timer = self._expiry = self._ping = None
        if self._hello is not None:
            self._hello.cancel()
        self._leave_engine()
        holds, self._holds = self._holds, []
        for hold in reversed(holds):
            hold.__exit__(None, None, None)
        if self._closed is not None and not self._closed.done():
            self._closed.set_result(None)

    # -- uvicorn's and the service's handles ------------------------------------------------

    def shutdown(self) -> None:
        """uvicorn's graceful shutdown: tell the viewer to come back (1012)."""
        self.close(protocol.CLOSE_RESTARTING)

    async def aclose(self, code: int) -> None:
        """Close with `code` and wait until the connection is gone (bounded: see close)."""
        if self._gone:
            return
        if self._closed is None:
            self._closed = asyncio.get_running_loop().create_future()
        self.close(code)
        await asyncio.shield(self._closed)

    def close(self, code: int) -> None:
        """Start the closing handshake; the connection is dropped if it does not finish."""
        self._leave_engine()
        if self._gone or self.transport is None:
            return
        if self._hello is not None:  # its answer no longer matters; the peer's close does
            self._hello.cancel()
            self._hello = None
            self.transport.resume_reading()
        if self.conn.state is State.OPEN:
            self.conn.send_close(code)
            self._send_pending()
        self._cancel_timer()
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(CLOSE_TIMEOUT, self._abort)

    # -- incoming --------------------------------------------------------------------------

    def _take_events(self) -> None:
        for event in self.conn.events_received():
            if isinstance(event, Request):
                self._upgrade(event)
            elif isinstance(event, Frame):
                if self._hello is not None:
                    self._backlog.append(event)  # handled in order once the hello is done
                else:
                    self._frame(event)
        self._send_pending()

    def _upgrade(self, request: Request) -> None:
        service = self.service
        headers = request.headers
        if not service.origin_allowed(headers.get("origin"), headers.get("host")):
            self._reject(403, "Forbidden origin")
            return
        if service.draining:
            self._reject(403, "Restarting")
            return
        response = self.conn.accept(request)
        if response.status_code == 101:
            for name, value in self._default_headers:
                header = name.decode("latin-1")
                if header.lower() != "date":
                    response.headers[header] = value.decode("latin-1")
        self.conn.send_response(response)
        self._send_pending()
        if self.conn.state is not State.OPEN:
            return  # a bad handshake: answered, and the connection closes
        address = service.client_address(self.peer, headers.get_all("x-forwarded-for"))
        if not self._hold(service.track_address(address)) or not service.admit():
            self.close(protocol.CLOSE_TOO_MANY)
            return
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self.settings.hello_timeout, self._hello_late)
        self._schedule_ping()

    def _frame(self, frame: Frame) -> None:
        if self.conn.state is not State.OPEN:
            return
        opcode = frame.opcode
        if opcode is Opcode.TEXT or opcode is Opcode.BINARY:
            if not frame.fin:
                self._fragments = [bytes(frame.data)]
                self._fragments_text = opcode is Opcode.TEXT
                return
            self._message(bytes(frame.data), opcode is Opcode.TEXT)
        elif opcode is Opcode.CONT:
            self._fragments.append(bytes(frame.data))
            if frame.fin:
                data, self._fragments = b"".join(self._fragments), []
                self._message(data, self._fragments_text)
        elif opcode is Opcode.PONG:
            self._awaiting_pong = False

    def _message(self, data: bytes, is_text: bool) -> None:
        text: str | None = None
        if is_text:
            try:
                text = data.decode()
            except UnicodeDecodeError:
                log.info("a text frame was not valid UTF-8: closed with 1007")
                self.conn.fail(1007, "invalid UTF-8")
                return
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

    # -- the hello -------------------------------------------------------------------------

    def _first_message(self, text: str | None) -> None:
        if self._hello is not None or self._timer is None:
            return  # the hello is being decided, or the socket is closing
        self._cancel_timer()
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
        if self._gone or self.conn.state is not State.OPEN:
            return  # closed meanwhile (a shutdown, say)
        if not facts.exists:
            self.close(protocol.CLOSE_UNAUTHENTICATED)
            return
        self.identity = identity
        if not self._hold(self.service.track_session(self)):
            self.identity = None
            self.close(protocol.CLOSE_TOO_MANY)
            return
        self.conn.send_text(
            protocol.welcome_frame(identity.user_id, identity.expires_at_iso).encode()
        )
        self._send_pending()
        loop = asyncio.get_running_loop()
        expires_in = max(0.0, identity.expires_at - time.time())
        self._expiry = loop.call_later(
            expires_in, self.close, protocol.CLOSE_UNAUTHENTICATED
        )  # the token expired on an open socket
        backlog, self._backlog = self._backlog, []
        for frame in backlog:
            self._frame(frame)
        self._send_pending()
        if self.transport is not None and not self._gone:
            self.transport.resume_reading()

    def _hello_late(self) -> None:
        self._timer = None
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
        while self._writable and self.conn.state is State.OPEN:
            item = outbox.pop()
            if item is None:
                return
            if isinstance(item, int):
                self.close(item)
                return
            transport.write(wire_text(item))

    def _send_now(self, frame: str) -> bool:
        """A state with nothing queued before it: written now if the socket takes it."""
        if self._writable and self.identity is not None and self.conn.state is State.OPEN:
            self.transport.write(wire_text(frame))  # type: ignore[union-attr]
            return True
        return False

    def _send_pending(self) -> None:
        """Write what the websockets core queued (handshake, pongs, close); an empty chunk
        is its end of stream."""
        transport = self.transport
        if transport is None:
            return
        for data in self.conn.data_to_send():
            if data:
                transport.write(data)
            else:
                transport.close()
                self._leave_engine()

    def _stalled(self) -> None:
        """It read nothing for the send timeout: try a close, then reset the connection."""
        self._timer = None
        log.info("closing a viewer that read nothing for %.0f s", self.settings.send_timeout)
        self._leave_engine()
        if self.conn.state is State.OPEN:
            self.conn.send_close(protocol.CLOSE_TOO_MANY)
            self._send_pending()
        self._abort()

    def _abort(self) -> None:
        self._timer = None
        if self.transport is not None and not self._gone:
            log.info("aborting the connection of a viewer that reads nothing")
            self.transport.abort()

    def _schedule_ping(self) -> None:
        interval = self.settings.ping_interval
        if interval > 0:
            loop = asyncio.get_running_loop()
            self._ping = loop.call_later(interval, self._keepalive)

    def _keepalive(self) -> None:
        self._ping = None
        if self._gone or self.conn.state is not State.OPEN:
            return
        if self._awaiting_pong:
            log.info("closing a viewer that answered no ping")
            self.close(CLOSE_INTERNAL)
            return
        self._awaiting_pong = True
        self.conn.send_ping(b"")
        self._send_pending()
        self._schedule_ping()

    # -- helpers ---------------------------------------------------------------------------

    def _broken(self) -> None:
        """The peer broke the protocol (a bad frame, bad UTF-8, too big): the core has sent
        its close; one line at INFO, since it is the client's mistake."""
        sent = self.conn.close_sent
        log.info(
            "a frame broke the protocol (%s): closed with %s",
            self.conn.parser_exc,
            sent.code if sent is not None else "no close frame",
        )
        self._leave_engine()
        self._cancel_timer()
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(CLOSE_TIMEOUT, self._abort)

    def _reject(self, status: int, text: str) -> None:
        self.conn.send_response(self.conn.reject(status, text))
        self._send_pending()

    def _hold(self, hold: contextlib.AbstractContextManager[bool]) -> bool:
        """Enter a limit's place (released in connection_lost); False when it is full."""
        if hold.__enter__():
            self._holds.append(hold)
            return True
        hold.__exit__(None, None, None)
        return False

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _leave_engine(self) -> None:
        if self.channels:
            channels, self.channels = self.channels, set()
            self.service.engine.drop_viewer(self, channels)


def connection_factory(service_of: Callable[[], Service | None]) -> Callable[..., Any]:
    """What uvicorn calls for an upgrade to `/ws` (see `deadline.py`)."""

    def create(config: Any, server_state: Any, app_state: Any) -> ViewerConnection:
        service = service_of()
        assert service is not None, "the service starts before uvicorn serves"
        return ViewerConnection(config, server_state, app_state, service=service)

    return create
