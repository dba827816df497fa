"""LISTEN on one dedicated connection and wake the engine for exactly what changed.

Notifications are hints: the engine's tick stays the source of truth, so a lost one costs
at most one interval. The first notification after a quiet spell wakes the engine at once;
the rest of a burst is folded into one wake-up per `window`, which the engine serves with
one batched read per kind. When the connection is lost, the listener comes
back with backoff and then has every live channel re-read once, because anything may
have changed while it was away.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
from collections.abc import Callable

import asyncpg

from ..database import displays as display_relay
from ..database import notifications
from ..database import relay as pusher_relay
from ..tasks import cancel_and_wait
from .engine import Engine

log = logging.getLogger("opspush.listener")

HEALTH_CHECK_SECONDS = 15.0  # a silent connection is asked `SELECT 1` this often
MAX_BACKOFF = 10.0
MAX_PENDING = 10_000  # past this, a burst is folded into "re-read everything"


class Listener:
    def __init__(
        self,
        dsn: str,
        engine: Engine,
        *,
        window: float = 0.02,
        notify: bool = True,
        relay: Callable[[str], None] | None = None,
        displays: Callable[[int], None] | None = None,
    ) -> None:
        self.dsn = dsn
        self.engine = engine
        self.window = window
        self.notify = notify  # wake the engine on change notifications
        # The Pusher HTTP API's messages from every process (pusher_relay), on this connection.
        self.relay = relay
        # Revoked wall displays, by id, from every process (database/displays.py).
        self.displays = displays
        self.connected = asyncio.Event()
        self.received = 0  # notifications seen
        self.connects = 0
        self.server_pid: int | None = None  # the backend holding LISTEN (for fault tests)
        # Fault injection for tests: return True to drop a payload as if it were lost.
        self.drop: Callable[[str], bool] | None = None
        self._pending: list[str] = []
        self._overflowed = False
        self._flush: asyncio.TimerHandle | None = None
        self._last_wake = -math.inf  # loop time of the last wake-up
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        assert self._task is None, "listener already started"
        self._task = asyncio.create_task(self._supervise(), name="opspush-listener")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None

    async def _supervise(self) -> None:
        backoff = 0.5
        while True:
            try:
                await self._listen()
                backoff = 0.5
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as error:
                log.warning("listener connection lost: %s", error)
            self.connected.clear()
            # Full jitter, so that many processes do not come back in step.
            await asyncio.sleep(random.uniform(0, backoff))
            backoff = min(MAX_BACKOFF, backoff * 2)

    async def _listen(self) -> None:
        connection = await asyncpg.connect(self.dsn, timeout=10)
        lost = asyncio.Event()
        try:
            connection.add_termination_listener(lambda _: lost.set())
            if self.notify:
                await connection.add_listener(notifications.CHANNEL, self._on_notification)
            if self.relay is not None:
                await connection.add_listener(pusher_relay.CHANNEL, self._on_relay)
            if self.displays is not None:
                await connection.add_listener(display_relay.CHANNEL, self._on_display)
            self.connects += 1
            self.server_pid = connection.get_server_pid()
            self.connected.set()
            if self.connects > 1:
                log.info("listener reconnected: re-reading every live channel")
            if self.notify:
                # On every (re)connect: anything may have changed while nobody listened.
                self.engine.wake_all()
            while not lost.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(HEALTH_CHECK_SECONDS):
                        await lost.wait()
                if not lost.is_set():
                    await connection.fetchval("SELECT 1", timeout=5)
        finally:
            connection.terminate()

    def _on_notification(
        self,
        _connection: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy,
        _pid: int,
        _channel: str,
        payload: object,
    ) -> None:
        assert isinstance(payload, str)
        self.received += 1
        if self.drop is not None and self.drop(payload):
            return
        if self.notify and notifications.is_access(payload):
            # Doubt the facts as soon as it arrives, not at the window's end: a state read
            # landing meanwhile may hold the revocation's transaction (see Fanout.cleared).
            self.engine.doubt_access()
        if len(self._pending) < MAX_PENDING:
            self._pending.append(payload)
        else:
            self._overflowed = True
        if self._flush is None:
            # The first notification after a quiet window is read at once (on the next turn
            # of the loop, with whatever else came in the same network read); later ones
            # wait for the window's end: at most one wake-up per window, never one per commit.
            loop = asyncio.get_running_loop()
            wait = max(0.0, self._last_wake + self.window - loop.time())
            self._flush = loop.call_later(wait, self._wake)

    @property
    def idle(self) -> bool:
        """Every notification received so far has been handed to the engine."""
        return self._flush is None

    def _on_relay(
        self,
        _connection: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy,
        _pid: int,
        _channel: str,
        payload: object,
    ) -> None:
        assert isinstance(payload, str) and self.relay is not None
        self.relay(payload)

    def _on_display(
        self,
        _connection: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy,
        _pid: int,
        _channel: str,
        payload: object,
    ) -> None:
        if self.displays is not None and isinstance(payload, str) and payload.isdigit():
            self.displays(int(payload))

    def _wake(self) -> None:
        self._flush = None
        self._last_wake = asyncio.get_running_loop().time()
        payloads, self._pending = self._pending, []
        if self._overflowed:
            self._overflowed = False
            self.engine.wake_all()
            return
        wakeup = notifications.parse(payloads)
        if wakeup.access:
            self.engine.recheck_now()
        if wakeup.channels:
            self.engine.wake_channels(wakeup.channels)
        if wakeup.tenants or wakeup.workspaces:
            self.engine.wake_scopes(wakeup.tenants, wakeup.workspaces)
