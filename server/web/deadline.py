"""uvicorn's HTTP protocols, guarded: what one client can hold before the app sees a request.

uvicorn times out an idle keep-alive connection, but bounds neither how long a request may
take to arrive nor how large its head may grow, nor how many connections one address opens:
a few bytes every so often hold a connection (and a file descriptor) open forever, and one
header value sent 64 KiB at a time is buffered without end. Here, for either HTTP parser:

- the request head, and then its body, must be complete within the deadline
  (OPSPUSH_HELLO_TIMEOUT, the same bound as for the WebSocket hello) after the connection
  opens or the previous response ends; otherwise the connection is closed;
- a head larger than `MAX_HEAD_BYTES` is answered 431 and closed, before the parser is fed
  more of it than that;
- one address holds at most OPSPUSH_MAX_CONNECTIONS_PER_ADDRESS HTTP connections (a trusted
  proxy's are not counted: they carry many clients); more are closed on arrival;
- when the process's connections near its open-file limit, a warning says so.

A WebSocket upgrade leaves these guards once its head is complete: its own limits apply.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Final
from urllib.parse import unquote

from uvicorn.protocols.http.h11_impl import H11Protocol

from ..core.proxy import Network, trusted_peer
from .connection import end_stream

log = logging.getLogger("opspush.http")

# A request head's bytes, request line included; nginx's default allows 4 x 8 KiB lines.
MAX_HEAD_BYTES: Final = 32 * 1024
HEAD_TOO_LARGE: Final = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
    b"content-type: text/plain; charset=utf-8\r\ncontent-length: 25\r\nconnection: close\r\n"
    b"\r\nrequest head is too large"
)
DESCRIPTORS_WARNING_SHARE: Final = 0.8  # of the soft open-file limit
WARNING_INTERVAL: Final = 60.0  # seconds between two warnings of one kind


class _Deadline:
    """The timer of one request: fires unless the request (head and body) arrived whole."""

    def __init__(self, protocol: Any, timeout: float) -> None:
        self.protocol = protocol
        self.waiting_for = protocol.cycle  # the request before the one we wait for
        self.timer = protocol.loop.call_later(timeout, self._expire)

    def cancel(self) -> None:
        self.timer.cancel()
        # The protocol holds this timer and this timer the protocol: without this, every
        # closed connection would wait as cyclic garbage for a rare full collection.
        self.protocol = None

    def head_arrived(self, cycle: Any) -> bool:
        return cycle is not self.waiting_for

    def _expire(self) -> None:
        protocol = self.protocol
        if protocol is None:
            return
        transport: Any = protocol.transport
        if transport.is_closing() or transport.get_protocol() is not protocol:
            return  # closed, or upgraded to a WebSocket
        arrived = self.head_arrived(protocol.cycle)
        if arrived and not protocol.cycle.more_body:
            return  # the request is whole: the app's business now
        part = "body" if arrived else "request"
        log.info("closing a connection whose %s did not arrive in time", part)
        transport.close()


class _Warnings:
    """Warnings that would repeat with every connection: one per kind per interval."""

    def __init__(self) -> None:
        self._last: dict[str, float] = {}

    def warn(self, kind: str, message: str, *args: object, level: int = logging.WARNING) -> None:
        now = time.monotonic()
        if now - self._last.get(kind, -WARNING_INTERVAL) >= WARNING_INTERVAL:
            self._last[kind] = now
            log.log(level, message, *args)


class _Guarded:
    """The guards above, for either of uvicorn's HTTP protocols (mixed in before it).

    It also routes upgrades: a path in `websocket_paths` (see `websocket_route`) gets its
    own protocol (`/ws`: web/websocket.py; `/app/{key}`: pusher/websocket.py), any other
    the one uvicorn was configured with (`ws`: a 404).
    """

    # Set per server by `http_protocol` (the class attributes of the type it makes).
    header_timeout: ClassVar[float] = 10.0
    websocket_paths: ClassVar[dict[str, Callable[..., asyncio.Protocol]]] = {}
    max_per_address: ClassVar[int] = 0  # 0: unlimited
    trusted_proxies: ClassVar[Sequence[Network]] = ()
    per_address: ClassVar[Counter[str]] = Counter()  # open HTTP connections by peer
    warnings: ClassVar[_Warnings] = _Warnings()

    _deadline: _Deadline
    _head_bytes: int
    cycle: Any
    _counted_as: str | None
    url: bytes
    ws_protocol_class: Any
    transport: Any  # uvloop's or asyncio's
    server_state: Any

    def connection_made(self, transport: Any) -> None:  # each base names its own type
        super().connection_made(transport)  # type: ignore[misc]
        self._head_bytes = 0
        self._counted_as = None
        self._refused = False
        self._linger: asyncio.TimerHandle | None = None
        self._deadline = _Deadline(self, self.header_timeout)
        if not self._admit(transport):
            transport.close()
            return
        self._check_descriptors()

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # answered 431: what it still sends is dropped unparsed
        if self.transport.get_protocol() is not self or self._deadline.head_arrived(self.cycle):
            super().data_received(data)  # type: ignore[misc]
            return
        room = MAX_HEAD_BYTES - self._head_bytes
        if len(data) <= room:
            self._head_bytes += len(data)
            super().data_received(data)  # type: ignore[misc]
            return
        # Only what may still be head; what follows a head that ends in it is its body
        # (or, after an upgrade, the WebSocket's frames).
        self._head_bytes = MAX_HEAD_BYTES
        super().data_received(data[:room])  # type: ignore[misc]
        protocol = self.transport.get_protocol()
        if protocol is not self:
            protocol.data_received(data[room:])  # type: ignore[attr-defined]
        elif self._deadline.head_arrived(self.cycle):
            self.data_received(data[room:])
        elif not self.transport.is_closing():
            self._refuse_head()

    def _refuse_head(self) -> None:
        """431, then a lingering close (as nginx does): see `end_stream`."""
        self.warnings.warn("head", "answered 431 to a request head past %d bytes",
                           MAX_HEAD_BYTES, level=logging.INFO)  # fmt: skip
        self._deadline.cancel()
        self.transport.write(HEAD_TOO_LARGE)
        self._refused = True
        self._linger = end_stream(self.transport, read=False)

    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]
        self._deadline.cancel()
        if not self.transport.is_closing():
            self._deadline = _Deadline(self, self.header_timeout)
        self._head_bytes = 0

    def connection_lost(self, exc: Exception | None) -> None:
        self._deadline.cancel()
        if self._linger is not None:
            self._linger.cancel()
        self._release()
        super().connection_lost(exc)  # type: ignore[misc]

    def handle_websocket_upgrade(self, *event: Any) -> None:
        self._deadline.cancel()  # the head is complete; and nothing keeps this object alive
        self._release()  # the socket is counted by its own limits from here on
        # h11 passes its request; httptools has parsed only the target so far.
        target: bytes = event[0].target if event else self.url
        own = websocket_route(
            self.websocket_paths, unquote(target.partition(b"?")[0].decode("latin-1"))
        )
        if own is not None:
            self.ws_protocol_class = own
        super().handle_websocket_upgrade(*event)  # type: ignore[misc]

    # -- per address and descriptors -------------------------------------------------------

    def _admit(self, transport: Any) -> bool:
        if self.max_per_address <= 0:
            return True
        peername = transport.get_extra_info("peername")
        peer = peername[0] if isinstance(peername, tuple) else None
        if peer is None or trusted_peer(peer, self.trusted_proxies):
            return True
        if self.per_address[peer] >= self.max_per_address:
            self.warnings.warn("address", "refusing HTTP connections from %s: %d open",
                               peer, self.per_address[peer], level=logging.INFO)  # fmt: skip
            return False
        self.per_address[peer] += 1
        self._counted_as = peer
        return True

    def _release(self) -> None:
        peer, self._counted_as = self._counted_as, None
        if peer is not None:
            self.per_address[peer] -= 1
            if self.per_address[peer] <= 0:
                del self.per_address[peer]

    def _check_descriptors(self) -> None:
        open_now = len(self.server_state.connections)
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if soft != resource.RLIM_INFINITY and open_now >= DESCRIPTORS_WARNING_SHARE * soft:
            self.warnings.warn(
                "descriptors",
                "%d connections open, near the open-file limit (%d): new ones will fail "
                "past it; raise the limit or add workers",
                open_now,
                soft,
            )


def websocket_route(
    paths: dict[str, Callable[..., asyncio.Protocol]], path: str
) -> Callable[..., asyncio.Protocol] | None:
    """The protocol for an upgrade to `path`: a key ending in "/" is a prefix, followed by
    one segment (`/app/` serves `/app/{key}`); any other key, that path exactly."""
    own = None if path.endswith("/") else paths.get(path)
    if own is None:
        prefix, _, segment = path.rpartition("/")
        if prefix and segment:
            own = paths.get(prefix + "/")
    return own


class H11Guarded(_Guarded, H11Protocol):
    pass


try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # pragma: no cover - httptools is part of uvicorn[standard]
    BASE: type[asyncio.Protocol] = H11Guarded
else:

    class HttpToolsGuarded(_Guarded, HttpToolsProtocol):
        pass

    BASE = HttpToolsGuarded


def http_protocol(
    header_timeout: float,
    websocket_paths: dict[str, Callable[..., asyncio.Protocol]] | None = None,
    *,
    max_per_address: int = 0,
    trusted_proxies: Sequence[Network] = (),
    base: type[asyncio.Protocol] = BASE,
) -> type[asyncio.Protocol]:
    """uvicorn's "auto" choice (httptools, else h11, or `base`), with the guards set; each
    call makes a class with its own per-address counts."""
    return type(
        base.__name__,
        (base,),
        {
            "header_timeout": header_timeout,
            "websocket_paths": dict(websocket_paths or {}),
            "max_per_address": max_per_address,
            "trusted_proxies": tuple(trusted_proxies),
            "per_address": Counter(),
            "warnings": _Warnings(),
        },
    )
