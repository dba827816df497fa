"""Closing a socket of either endpoint, and resetting one whose peer stopped reading.

Shared by `/ws`, `/app/{key}` and the service's drain, so that none of them imports another.
"""

from __future__ import annotations

import asyncio
import logging

from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketState

log = logging.getLogger("opspush.websocket")  # the name these lines were always logged under

CLOSE_TIMEOUT = 5.0  # how long a close handshake may take before we give up on the peer

SERVER_SEND = "opspush.server_send"


class KeepServerSend:
    """ASGI middleware: keep the server's `send` in the scope before anything wraps it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            scope[SERVER_SEND] = send
        await self.app(scope, receive, send)


async def close_quietly(websocket: WebSocket, code: int) -> None:
    """Close if still open; a peer that is gone or stuck must not hold us up."""
    if websocket.application_state == WebSocketState.DISCONNECTED:
        return
    try:
        async with asyncio.timeout(CLOSE_TIMEOUT):
            await websocket.close(code=code)
    except TimeoutError:
        # A peer that reads nothing can't take even a close frame: drop the connection.
        abort_connection(websocket)
    except Exception:  # the peer left meanwhile: nothing to close
        pass


def abort_connection(websocket: WebSocket) -> None:
    """Reset the TCP connection under a WebSocket whose peer has stopped reading.

    ASGI has no "abort"; uvicorn's protocol object (the owner of the server's own `send`,
    kept in the scope by `KeepServerSend`) holds the transport. Without this, a socket whose
    write buffer never drains would stay open, buffer and all, for as long as the peer
    keeps its receive window shut.
    """
    protocol_object = getattr(websocket.scope.get(SERVER_SEND), "__self__", None)
    transport = getattr(protocol_object, "transport", None)
    abort = getattr(transport, "abort", None)
    if callable(abort):
        log.info("aborting the connection of a viewer that reads nothing")
        abort()
