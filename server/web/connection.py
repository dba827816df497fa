"""An upgraded WebSocket on the websockets Sans-I/O core, driven by callbacks: no task.

uvicorn parses the upgrade request and hands the socket over (`deadline.py` routes the path);
from then on a `FrameConnection` owns it. `data_received` feeds the websockets
`ServerProtocol`; the upgrade request, each whole message (fragments joined, text checked
for UTF-8), pongs and the end of the connection come to the subclass as method calls. It
answers pings, keeps the peer alive with its own, closes with a bounded handshake and
follows the transport's flow control (`writable`).

The frame layer only: what the messages mean is the subclass's (`websocket.py` for `/ws`;
the conformance suite runs Autobahn against an echo built on this same class).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn, cast

from websockets.exceptions import ProtocolError
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import State
from websockets.server import ServerProtocol

log = logging.getLogger("opspush.websocket")

CLOSE_TIMEOUT = 5.0  # how long a close handshake may take before the connection is dropped
CLOSE_INVALID_DATA = 1007
CLOSE_INTERNAL = 1011
CLOSE_TOO_BIG = 1009


LINGER_SECONDS = 1.0  # between our FIN and closing the socket, unless the peer's comes first


def end_stream(transport: Any, *, read: bool) -> asyncio.TimerHandle | None:
    """Close our side of a connection: a FIN now, the socket a moment later (or at the
    peer's FIN, when `read`). Closing a socket while the peer still sends resets it at once,
    and the reset can overtake what we wrote last (a close frame, a 431). A peer that broke
    the rules is not read any more (`read` False): what it sends meanwhile stays in the
    kernel's buffer, costing us nothing."""
    if not transport.can_write_eof():
        transport.close()
        return None
    transport.write_eof()
    if not read:
        transport.pause_reading()
    return asyncio.get_running_loop().call_later(LINGER_SECONDS, transport.close)


@functools.lru_cache(maxsize=64)
def wire_text(text: str) -> bytes:
    """A server text frame, ready for the socket: encoded once for every viewer of it."""
    return Frame(Opcode.TEXT, text.encode()).serialize(mask=False, extensions=[])


@dataclass(frozen=True, slots=True)
class FrameLimits:
    """What one peer may make the frame layer do, whatever frames it sends.

    Every frame counts against the bucket (`rate` per second, bursts of `burst`; rate 0:
    off), control and continuation frames included: a flood of empty frames costs the
    parser as much as a flood of messages. A peer past any limit is failed at once: its
    close frame goes out, the TCP connection closes, and nothing more of what it sent is
    parsed, so one read of its bytes does bounded work and the loop serves everyone else.
    """

    rate: float
    burst: int
    max_fragments: int  # frames of one fragmented message (its bytes are max_size's)
    flood_code: int  # the close code for a flood (the endpoint's "too many")
    # Pings answered while the peer reads none of our writes (the transport is paused):
    # their pongs would queue without end.
    max_unread_pings: int = 16


def _never() -> bool:
    return False


class FrameFlood(ProtocolError):
    """A peer went past its FrameLimits; the connection is failed."""


class ServerConnection(ServerProtocol):
    """The websockets library's server side, with FrameLimits (both WebSocket stacks use
    it: `FrameConnection` below and uvicorn's, see commands/runner.py), and one change: a
    close frame in the middle of a fragmented message closes normally (RFC 6455 5.4:
    control frames may come between the fragments) instead of failing the connection with
    1002; the partial message is dropped. Autobahn case 7.1.5."""

    # Called after each frame is parsed, before the next: what a frame makes the app do
    # (answer, refuse, close) happens in order, before the limits judge the frames after it.
    on_frame: Callable[[], None] | None = None
    _limits: FrameLimits | None = None  # unset: no limits (set by `limit`)
    _write_paused: Callable[[], bool]
    _tokens: float
    _refilled: float
    _fragments: int
    _unread_pings: int

    def limit(self, limits: FrameLimits, write_paused: Callable[[], bool]) -> None:
        """Apply `limits`; `write_paused` tells whether the transport stopped taking our
        writes (the peer reads nothing)."""
        self._limits = limits
        self._write_paused = write_paused
        self._tokens = float(limits.burst)
        self._refilled = time.monotonic()
        self._fragments = 0
        self._unread_pings = 0

    def release(self) -> None:
        """Drop the callbacks into the connection's owner (at its end): they and the owner
        refer to each other, and a cycle would wait for a rare full collection."""
        self.on_frame = None
        self._write_paused = _never

    def recv_frame(self, frame: Frame) -> None:
        limits = self._limits
        if limits is not None:
            self._count(frame, limits)
        if frame.opcode is Opcode.CLOSE:
            self.current_size = None
        super().recv_frame(frame)
        if self.on_frame is not None:
            self.on_frame()

    def _count(self, frame: Frame, limits: FrameLimits) -> None:
        if limits.rate > 0:
            now = time.monotonic()
            self._tokens = min(limits.burst, self._tokens + (now - self._refilled) * limits.rate)
            self._refilled = now
            if self._tokens < 1.0:
                self._fail(limits.flood_code, "too many frames")
            self._tokens -= 1.0
        opcode = frame.opcode
        if opcode is Opcode.CONT:
            self._fragments += 1  # the message's frames so far: the first and these
            if 1 + self._fragments >= limits.max_fragments and not frame.fin:
                self._fail(CLOSE_TOO_BIG, "too many fragments")
        elif opcode is Opcode.TEXT or opcode is Opcode.BINARY:
            self._fragments = 0
        elif opcode is Opcode.PING:
            if not self._write_paused():
                self._unread_pings = 0
            elif self._unread_pings >= limits.max_unread_pings:
                self._fail(limits.flood_code, "pings while reading none of the pongs")
            else:
                self._unread_pings += 1

    def _fail(self, code: int, reason: str) -> NoReturn:
        """Fail the connection with `code` and stop the parser: raising out of recv_frame
        ends `parse()` (which then keeps our close frame, already sent) and the rest of the
        peer's bytes are discarded unread."""
        self.fail(code, reason)
        raise FrameFlood(reason)


class FrameConnection(asyncio.Protocol):
    """One upgraded socket: the frame layer, with hooks for what the messages mean."""

    def __init__(
        self, server_state: Any, *, max_size: int, ping_interval: float, limits: FrameLimits
    ) -> None:
        self._server_state = server_state
        self._default_headers: list[tuple[bytes, bytes]] = server_state.default_headers
        self._ping_interval = ping_interval
        self.conn = ServerConnection(max_size=max_size)
        self.conn.limit(limits, lambda: not self.writable)
        self.conn.on_frame = self.take_events
        self.transport: asyncio.Transport | None = None
        self.peer: str | None = None
        self.writable = True  # the transport takes more (flow control)
        self.gone = False  # connection_lost has run
        self._fragments: list[bytes] = []
        self._fragments_text = False
        self._close_timer: asyncio.TimerHandle | None = None
        self._linger: asyncio.TimerHandle | None = None
        self._ping: asyncio.TimerHandle | None = None
        self._awaiting_pong = False
        self._closed: asyncio.Future[None] | None = None

    # -- hooks -----------------------------------------------------------------------------

    def refuse(self, request: Request) -> tuple[int, str] | None:
        """An HTTP status and text to refuse the upgrade with, or None to accept it."""
        return None

    def opened(self, request: Request) -> None:
        """The handshake succeeded; messages may follow."""

    def received(self, data: bytes, text: str | None) -> None:
        """A whole message: `text` is its decoded text, None for a binary message."""

    def drained(self) -> None:
        """The transport takes writes again after a pause."""

    def blocked(self) -> None:
        """The transport paused writes: the peer reads slower than we write."""

    def ended(self) -> None:
        """The connection is gone (closed, reset or lost): release what it holds."""

    # -- sending and closing ---------------------------------------------------------------

    def open(self) -> bool:
        return not self.gone and self.conn.state is State.OPEN

    def send_text(self, text: str) -> None:
        if self.open():
            self.conn.send_text(text.encode())
            self.send_pending()

    def send_binary(self, data: bytes) -> None:
        if self.open():
            self.conn.send_binary(data)
            self.send_pending()

    def send_pending(self) -> None:
        """Write what the websockets core queued (handshake, frames, pongs, close); an empty
        chunk is its end of stream."""
        transport = self.transport
        if transport is None:
            return
        for data in self.conn.data_to_send():
            if data:
                transport.write(data)
            elif self._linger is None:
                # Read on only for the peer's FIN after its close frame: a peer we failed
                # (a flood, a broken frame) is not read any more.
                self._linger = end_stream(transport, read=self.conn.close_rcvd is not None)

    def close(self, code: int) -> None:
        """Start the closing handshake; the connection is dropped if it does not finish."""
        if self.gone or self.transport is None:
            return
        if self.conn.state is State.OPEN:
            self.conn.send_close(code)
            self.send_pending()
        self._deadline_for_close()

    async def aclose(self, code: int) -> None:
        """Close with `code` and wait until the connection is gone (bounded: see close)."""
        if self.gone:
            return
        if self._closed is None:
            self._closed = asyncio.get_running_loop().create_future()
        self.close(code)
        await asyncio.shield(self._closed)

    def abort(self) -> None:
        """Reset the connection: for a peer that reads nothing, even a close frame."""
        if self.transport is not None and not self.gone:
            self.transport.abort()

    def shutdown(self) -> None:
        """uvicorn's graceful shutdown (it calls every connection's `shutdown`)."""
        self.close(1012)

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if isinstance(peer, tuple) else None
        self._server_state.connections.add(self)

    def data_received(self, data: bytes) -> None:
        self.conn.receive_data(data)
        self.take_events()
        if self.conn.parser_exc is not None and not self.gone:
            self._broken()

    def eof_received(self) -> bool | None:
        self.conn.receive_eof()
        self.take_events()
        return None

    def pause_writing(self) -> None:
        self.writable = False
        self.blocked()

    def resume_writing(self) -> None:
        self.writable = True
        self.drained()

    def connection_lost(self, exc: Exception | None) -> None:
        self.gone = True
        self._server_state.connections.discard(self)
        for handle in (self._close_timer, self._ping, self._linger):
            if handle is not None:
                handle.cancel()
        self._close_timer = self._ping = None
        self.conn.release()
        self.ended()
        if self._closed is not None and not self._closed.done():
            self._closed.set_result(None)

    # -- incoming --------------------------------------------------------------------------

    def take_events(self) -> None:
        """Handle what the core parsed so far (a subclass may hold frames back meanwhile)."""
        for event in self.conn.events_received():
            if isinstance(event, Request):
                self._upgrade(event)
            elif isinstance(event, Frame):
                self.frame(event)
        self.send_pending()

    def frame(self, frame: Frame) -> None:
        if not self.open():
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
        if not is_text:
            self.received(data, None)
            return
        try:
            text = data.decode()
        except UnicodeDecodeError:
            log.info("a text frame was not valid UTF-8: closed with 1007")
            self.conn.fail(CLOSE_INVALID_DATA, "invalid UTF-8")
            self._deadline_for_close()
            return
        self.received(data, text)

    def _upgrade(self, request: Request) -> None:
        refusal = self.refuse(request)
        if refusal is not None:
            self.conn.send_response(self.conn.reject(*refusal))
            self.send_pending()
            return
        response: Response = self.conn.accept(request)
        if response.status_code == 101:
            for name, value in self._default_headers:
                header = name.decode("latin-1")
                if header.lower() != "date":
                    response.headers[header] = value.decode("latin-1")
        self.conn.send_response(response)
        self.send_pending()
        if self.conn.state is not State.OPEN:
            return  # a bad handshake: answered, and the connection closes
        self._schedule_ping()
        self.opened(request)

    def _broken(self) -> None:
        """The peer broke the protocol (a bad frame, bad UTF-8, too big): the core has sent
        its close; one line at INFO, since it is the client's mistake."""
        sent = self.conn.close_sent
        log.info(
            "a frame broke the protocol (%s): closed with %s",
            self.conn.parser_exc,
            sent.code if sent is not None else "no close frame",
        )
        self._deadline_for_close()

    def _deadline_for_close(self) -> None:
        if self._close_timer is None and not self.gone:
            loop = asyncio.get_running_loop()
            self._close_timer = loop.call_later(CLOSE_TIMEOUT, self._close_late)

    def _close_late(self) -> None:
        self._close_timer = None
        if not self.gone:
            log.info("aborting a connection whose close did not complete in time")
            self.abort()

    # -- keepalive -------------------------------------------------------------------------

    def _schedule_ping(self) -> None:
        if self._ping_interval > 0 and not self.gone:
            loop = asyncio.get_running_loop()
            self._ping = loop.call_later(self._ping_interval, self._keepalive)

    def _keepalive(self) -> None:
        self._ping = None
        if not self.open():
            return
        if self._awaiting_pong:
            log.info("closing a connection that answered no ping")
            self.close(CLOSE_INTERNAL)
            return
        self._awaiting_pong = True
        self.conn.send_ping(b"")
        self.send_pending()
        self._schedule_ping()


class NoSuchPath(FrameConnection):
    """An upgrade to a path no endpoint serves: 404, as the app answers it over HTTP."""

    def refuse(self, request: Request) -> tuple[int, str] | None:
        return 404, "Not Found"


def no_such_path(config: Any, server_state: Any, app_state: Any) -> NoSuchPath:
    """uvicorn's `ws` protocol: every path it is left with is one nobody serves."""
    limits = FrameLimits(rate=0, burst=1, max_fragments=1, flood_code=CLOSE_INTERNAL)
    return NoSuchPath(server_state, max_size=1024, ping_interval=0, limits=limits)
