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
from typing import Any

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
    """The deadline above, for either of uvicorn's HTTP protocols (mixed in before it)."""

    header_timeout = 10.0
    _deadline: _Deadline

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


def http_protocol(header_timeout: float) -> type[asyncio.Protocol]:
    """uvicorn's "auto" choice (httptools, else h11), with the deadline set."""
    return type(BASE.__name__, (BASE,), {"header_timeout": header_timeout})
