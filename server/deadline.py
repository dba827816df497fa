"""uvicorn's HTTP protocols, with a deadline on each request's head (slowloris).

uvicorn times out an idle keep-alive connection, but not a request whose line and headers
arrive slowly or never: a few bytes every so often hold a connection (and a file
descriptor) open forever. Here every connection must complete its request head within
the deadline (OPSPUSH_HELLO_TIMEOUT, the same bound as for the WebSocket hello) after it
opens, and again after each response; otherwise it is closed. A request whose head is
complete (a WebSocket upgrade too) is no longer this deadline's business.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote

from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("opspush.http")


class _Deadline:
    """The timer of one connection: fires unless a new request head arrived meanwhile."""

    def __init__(self, protocol: Any, timeout: float) -> None:
        self.protocol = protocol
        self.waiting_for = protocol.cycle  # the request before the one we wait for
        self.timer = protocol.loop.call_later(timeout, self._expire)

    def cancel(self) -> None:
        self.timer.cancel()

    def _expire(self) -> None:
        protocol = self.protocol
        transport: asyncio.Transport = protocol.transport
        if transport.is_closing() or transport.get_protocol() is not protocol:
            return  # closed, or upgraded to a WebSocket
        if self.protocol.cycle is not self.waiting_for:
            return  # a request head arrived
        log.info("closing a connection whose request did not arrive in time")
        transport.close()


class _HeadDeadline:
    """The deadline above, for either of uvicorn's HTTP protocols (mixed in before it).

    It also routes upgrades: a path in `websocket_paths` gets its own protocol (`/ws`: see
    websocket.py) instead of uvicorn's ASGI WebSocket.
    """

    header_timeout = 10.0
    websocket_paths: dict[str, Callable[..., asyncio.Protocol]] = {}  # noqa: RUF012  # per class
    _deadline: _Deadline
    url: bytes
    ws_protocol_class: Any

    def connection_made(self, transport: Any) -> None:  # each base names its own type
        super().connection_made(transport)  # type: ignore[misc]
        self._deadline = _Deadline(self, self.header_timeout)

    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]
        self._deadline.cancel()
        self._deadline = _Deadline(self, self.header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._deadline.cancel()
        super().connection_lost(exc)  # type: ignore[misc]

    def handle_websocket_upgrade(self, *event: Any) -> None:
        self._deadline.cancel()  # the head is complete; and nothing keeps this object alive
        # h11 passes its request; httptools has parsed only the target so far.
        target: bytes = event[0].target if event else self.url
        own = self.websocket_paths.get(unquote(target.partition(b"?")[0].decode("latin-1")))
        if own is not None:
            self.ws_protocol_class = own
        super().handle_websocket_upgrade(*event)  # type: ignore[misc]


class H11WithDeadline(_HeadDeadline, H11Protocol):
    pass


try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # pragma: no cover - httptools is part of uvicorn[standard]
    BASE: type[asyncio.Protocol] = H11WithDeadline
else:

    class HttpToolsWithDeadline(_HeadDeadline, HttpToolsProtocol):
        pass

    BASE = HttpToolsWithDeadline


def http_protocol(
    header_timeout: float,
    websocket_paths: dict[str, Callable[..., asyncio.Protocol]] | None = None,
) -> type[asyncio.Protocol]:
    """uvicorn's "auto" choice (httptools, else h11), with the deadline and the routes set."""
    return type(
        BASE.__name__,
        (BASE,),
        {"header_timeout": header_timeout, "websocket_paths": dict(websocket_paths or {})},
    )
