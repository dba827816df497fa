"""A socket the engine pushes to, on the frame layer (connection.py): what `/ws` and the
Pusher endpoint share, so that both send the same way.

The engine drops frames into the socket's `Outbox`, which writes a state straight to the
transport when nothing waits before it and the peer keeps up: the frame is encoded once
per channel (`wire_text`, shared by all its viewers) and written without a task switch.
When the peer reads slowly the transport pauses us; frames then wait in the outbox, states
conflated per channel, until `drained` empties it; a peer that stays paused for the send
timeout is closed with the endpoint's "too many" code and its connection reset.

The limits a socket takes a place in (per address, per user, the open sessions) are held
until the connection ends, whatever ends it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..core import protocol
from ..core.channels import Channel
from ..engine.outbox import Outbox
from .connection import FrameConnection, FrameLimits, wire_text

if TYPE_CHECKING:
    from ..service import Service

log = logging.getLogger("opspush.websocket")


class EngineSocket(FrameConnection):
    """The sending half of a viewer's socket: the outbox, backpressure, the send timeout,
    the rate limit on its messages, and its places in the service's limits."""

    def __init__(
        self,
        server_state: Any,
        *,
        service: Service,
        too_many: int,
        outbox_type: type[Outbox] = Outbox,
        extra_frames: int = 0,
    ) -> None:
        settings = service.settings
        limits = FrameLimits(
            settings.frame_rate, settings.frame_burst, settings.max_fragments, too_many
        )
        super().__init__(
            server_state,
            max_size=settings.max_frame_bytes,
            ping_interval=settings.ping_interval,
            limits=limits,
        )
        self.service = service
        self.settings = settings
        self.too_many = too_many  # the close code for a peer that can't keep up, or floods
        # Errors and ends are bounded by what the client may ask for (plus the endpoint's
        # `extra_frames`); states by subscriptions.
        self.outbox = outbox_type(
            2 * settings.max_subscriptions + settings.rate_burst + extra_frames,
            wake=self._flush,
            direct=self._send_now,
        )
        self.channels: set[Channel] = set()  # opspush's channels, through the engine
        self.limiter = protocol.RateLimiter(
            settings.rate_per_second, settings.rate_burst, time.monotonic()
        )
        self._deadline: asyncio.TimerHandle | None = None  # the send timeout (or the hello's)
        self._holds: list[contextlib.AbstractContextManager[bool]] = []

    # -- for the endpoint ------------------------------------------------------------------

    @property
    def sending(self) -> bool:
        """May the outbox write to the socket yet (the endpoint's greeting is out)?"""
        return True

    def hold(self, place: contextlib.AbstractContextManager[bool]) -> bool:
        """Enter a limit's place (released when the connection ends); False when full."""
        if place.__enter__():
            self._holds.append(place)
            return True
        place.__exit__(None, None, None)
        return False

    def cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def leave_engine(self) -> None:
        if self.channels:
            channels, self.channels = self.channels, set()
            self.service.engine.drop_viewer(self, channels)  # type: ignore[arg-type]

    # -- the connection's hooks ------------------------------------------------------------

    def blocked(self) -> None:
        if self._deadline is None and self.sending:
            loop = asyncio.get_running_loop()
            self._deadline = loop.call_later(self.settings.send_timeout, self._stalled)

    def drained(self) -> None:
        self.cancel_deadline()
        self._flush()

    def close(self, code: int) -> None:
        self.leave_engine()
        self.cancel_deadline()
        super().close(code)

    def ended(self) -> None:
        self.cancel_deadline()
        self.leave_engine()
        holds, self._holds = self._holds, []
        for place in reversed(holds):
            place.__exit__(None, None, None)

    # -- outgoing --------------------------------------------------------------------------

    def _flush(self) -> None:
        """Write what the outbox holds while the transport takes it (the outbox's wake-up)."""
        outbox = self.outbox
        if outbox.overflowed:
            self.close(self.too_many)
            return
        transport = self.transport
        if transport is None or not self.sending:
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
        """A frame with nothing queued before it: written now if the socket takes it."""
        if self.writable and self.sending and self.open():
            self.transport.write(wire_text(frame))  # type: ignore[union-attr]
            return True
        return False

    def _stalled(self) -> None:
        """It read nothing for the send timeout: try a close, then reset the connection."""
        self._deadline = None
        log.info("closing a viewer that read nothing for %.0f s", self.settings.send_timeout)
        self.close(self.too_many)
        log.info("aborting the connection of a viewer that reads nothing")
        self.abort()


def connection_factory(
    endpoint: Callable[..., EngineSocket], service_of: Callable[[], Service | None]
) -> Callable[..., EngineSocket]:
    """What uvicorn calls for an upgrade routed to `endpoint` (see deadline.py); the service
    is looked up then, since the app's lifespan makes it after uvicorn's config exists."""

    def create(config: Any, server_state: Any, app_state: Any) -> EngineSocket:
        service = service_of()
        assert service is not None, "the service starts before uvicorn serves"
        return endpoint(server_state, service=service)

    return create
