"""An ASGI WebSocket's sending and closing (the Pusher endpoint; `/ws` is web/websocket.py).

Draining a viewer's outbox into the socket, closing without being held up by a peer that is
gone or stuck, and resetting the connection of one that stopped reading.
"""

from __future__ import annotations

import asyncio
import logging

from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from ..engine.outbox import Outbox
from ..web.connection import CLOSE_TIMEOUT

log = logging.getLogger("opspush.websocket")  # the name these lines were always logged under

SERVER_SEND = "opspush.server_send"


class KeepServerSend:
    """ASGI middleware: keep the server's `send` in the scope before anything wraps it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            scope[SERVER_SEND] = send
        await self.app(scope, receive, send)


async def send_from_outbox(
    websocket: WebSocket,
    outbox: Outbox,
    ready: asyncio.Event,
    send_timeout: float,
    overflow_code: int,
) -> tuple[int | None, bool]:
    """Drain a viewer's outbox into its socket until a close is due; `ready` is what the
    outbox's wake-up sets.

    Returns the close code to send (None: the peer left) and whether the peer stopped
    reading for `send_timeout` (its connection is then reset after the close is tried).
    """
    while True:
        await ready.wait()
        item = outbox.pop()
        if item is None:
            ready.clear()  # drained: the outbox's wake-up sets it again
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
