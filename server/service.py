"""The running service: owns the pool, the engine and the open sessions, and ends them.

Created by the application's lifespan (see app.py); nothing here is a module global, so
tests can run several services side by side.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import asyncpg

from .config import Settings
from .core import protocol, proxy
from .core.clock import Clock
from .database import relay as pusher_relay
from .database.storage import Storage, create_pool
from .engine.engine import Engine
from .engine.failures import FailureLog
from .engine.listener import Listener
from .engine.stats import EngineStats

if TYPE_CHECKING:
    from .pusher.hub import PusherHub  # the Pusher dialect's: it sits above the service


class Session(Protocol):
    """An open socket of either endpoint (`/ws`, or `/app/{key}` before any sign-in)."""

    @property
    def user_id(self) -> int | None: ...

    async def aclose(self, code: int) -> None:
        """Close with `code`; return once closed, or given up on (a bounded wait)."""

    def terminate(self) -> None:
        """The host ended this user's connections (`terminate_connections`): close now."""


log = logging.getLogger("opspush.service")


class Service:
    def __init__(self, settings: Settings, dsn: str, clock: Clock | None = None) -> None:
        self.settings = settings
        self.dsn = dsn
        self.clock = clock
        self.stats = EngineStats()
        self.sessions: set[Session] = set()
        self.per_user: Counter[int] = Counter()
        # Displays revoked while this process runs (a few ids): a hello whose check of the
        # display ran before the revocation, and ends after its notice, is refused too.
        self.revoked_displays: set[int] = set()
        self.per_address: Counter[str] = Counter()
        self.draining = False
        # A reconnect storm is admitted at a bounded rate; the rest are told to back off.
        self._admission = protocol.RateLimiter(
            settings.admission_rate, settings.admission_burst, time.monotonic()
        )
        self._sessions_changed = asyncio.Event()
        # The HTTP API's reads that fail: logged once per interval, not per request.
        self.http_failures = FailureLog(logging.getLogger("opspush.http"), "database read (HTTP)")
        self._pool: asyncpg.Pool | None = None
        self._engine: Engine | None = None
        self.listener: Listener | None = None
        # The host's own channels and events (the Pusher HTTP API), when configured: set by
        # the app that mounts the Pusher endpoint (app.py), before `start`.
        self.pusher_hub: PusherHub | None = None

    @property
    def engine(self) -> Engine:
        assert self._engine is not None, "service not started"
        return self._engine

    @property
    def pool(self) -> asyncpg.Pool:
        assert self._pool is not None, "service not started"
        return self._pool

    @property
    def storage(self) -> Storage:
        return self.engine.storage

    async def start(self) -> None:
        schema = self.settings.attach_schema
        self._pool = await create_pool(self.dsn, self.settings.pool_size, schema=schema)
        if schema is not None:
            await self._announce_attach(schema)
        self._engine = Engine(
            Storage(self._pool),
            clock=self.clock,
            recheck_interval=self.settings.recheck_interval,
            wall_max_runs=self.settings.wall_max_runs,
            stats=self.stats,
        )
        self._engine.start()
        # Always: a display's revocation reaches every process this way (docs/displays.md).
        self.listener = Listener(
            self.dsn,
            self._engine,
            window=self.settings.notify_window,
            notify=self.settings.notify,
            relay=None if self.pusher_hub is None else self.pusher_hub.on_payload,
            displays=self.terminate_display,
        )
        self.listener.start()
        if self.pusher_hub is not None:
            pool = self._pool
            self.pusher_hub.start(lambda message: pusher_relay.publish(pool, message))

    async def _announce_attach(self, schema: str) -> None:
        from .attach.attach import triggers_installed

        triggers = await triggers_installed(self.pool, schema)
        if triggers and self.settings.notify:
            log.info(
                "attach mode: serving from schema %s; %d host triggers notify", schema, triggers
            )
        else:
            log.warning(
                "attach mode: serving from schema %s without notification triggers: changes are "
                "seen by the tick alone (runs within their interval, access within %g s)",
                schema,
                2 * self.settings.recheck_interval,
            )

    async def stop(self) -> None:
        """Close every socket with 1012, wait a bounded drain, then the engine and the pool."""
        self.draining = True
        if self.sessions:
            await self.close_all(protocol.CLOSE_RESTARTING)
        if self.pusher_hub is not None:
            await self.pusher_hub.stop()
        if self.listener is not None:
            await self.listener.stop()
        if self._engine is not None:
            await self._engine.stop()
        if self._pool is not None:
            pool, self._pool = self._pool, None
            try:
                async with asyncio.timeout(5.0):
                    await pool.close()
            except TimeoutError:
                pool.terminate()

    async def close_all(self, code: int) -> None:
        closing = [session.aclose(code) for session in list(self.sessions)]
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.settings.drain_seconds):
                await asyncio.gather(*closing)

    async def ready(self) -> bool:
        if self._pool is None:
            return False
        try:
            await self.storage.ping()
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
            return False
        return True

    def terminate_user(self, user_id: int) -> None:
        """Close every socket of this user on this process: `/ws` ones and signed-in Pusher
        ones (the HTTP API's `terminate_connections`, relayed to every process)."""
        ended = [session for session in self.sessions if session.user_id == user_id]
        for session in ended:
            session.terminate()
        if ended:
            log.info("the host terminated user %d's connections: %d socket(s)", user_id, len(ended))

    def terminate_display(self, display_id: int) -> None:
        """Close every socket of this wall display on this process: it was revoked (on any
        process: the revocation is relayed through PostgreSQL, database/displays.py)."""
        self.revoked_displays.add(display_id)
        ended = [s for s in self.sessions if getattr(s, "display_id", None) == display_id]
        for session in ended:
            session.terminate()
        if ended:
            log.info("display %d was revoked: %d socket(s) closed", display_id, len(ended))

    async def wait_sessions(self, predicate: Callable[[set[Session]], bool]) -> None:
        """Wait until the open sessions satisfy `predicate` (for tests and drains)."""
        while not predicate(self.sessions):
            self._sessions_changed.clear()
            await self._sessions_changed.wait()

    # -- admission -----------------------------------------------------------------------

    def origin_allowed(self, origin: str | None, host: str | None) -> bool:
        """Exact match against the allowed list; with no list, same origin only.

        Non-browser clients send no Origin and are let through: the token is their guard.
        """
        if origin is None:
            return True
        origin = origin.rstrip("/").lower()
        if self.settings.allowed_origins:
            return origin in self.settings.allowed_origins
        return host is not None and origin in (f"http://{host.lower()}", f"https://{host.lower()}")

    def upgrade_refusal(
        self, origins: Sequence[str], hosts: Sequence[str]
    ) -> tuple[int, str] | None:
        """The HTTP status and text refusing an upgrade with these Origin and Host headers.

        Each may appear once (RFC 6454, RFC 9112): with two, which one a check trusts is a
        guess, so a repeat is the client's mistake and a 400, not a crash or a pass.
        """
        if len(origins) > 1 or len(hosts) > 1:
            return 400, "Origin and Host may each appear once"
        if not self.origin_allowed(origins[0] if origins else None, hosts[0] if hosts else None):
            return 403, "Forbidden origin"
        return None

    def admit(self) -> bool:
        """A new socket within the admission rate (OPSPUSH_ADMISSION_RATE)?"""
        return self._admission.allow(time.monotonic())

    def client_address(self, peer: str | None, forwarded_for: list[str]) -> str:
        """The address the per-address limit counts: see core/proxy.py (OPSPUSH_TRUST_PROXY)."""
        return proxy.client_address(peer, forwarded_for, self.settings.trusted_proxies)

    def track_address(self, address: str) -> contextlib.AbstractContextManager[bool]:
        """A place for one more socket from this address, if its limit allows."""
        return _counted(self.per_address, address, self.settings.max_connections_per_address)

    def track_user(self, user_id: int) -> contextlib.AbstractContextManager[bool]:
        """A place for one more socket of this user, either endpoint's, if its limit allows
        (OPSPUSH_MAX_CONNECTIONS_PER_USER)."""
        return _counted(self.per_user, user_id, self.settings.max_connections_per_user)

    @contextlib.contextmanager
    def track_session(self, session: Session) -> Iterator[bool]:
        """Count `session` among the open ones; a `/ws` socket, whose user is known by now,
        takes a place of its user's too (a Pusher socket takes one when it signs in)."""
        with contextlib.ExitStack() as places:
            user_id = session.user_id
            if user_id is not None and not places.enter_context(self.track_user(user_id)):
                yield False
                return
            self.sessions.add(session)
            self._sessions_changed.set()
            try:
                yield True
            finally:
                self.sessions.discard(session)
                self._sessions_changed.set()


@contextlib.contextmanager
def _counted(counts: Counter[Any], key: Any, limit: int) -> Iterator[bool]:
    """Count one holder of `key` while the block runs, unless `limit` (0: none) is reached."""
    admitted = not limit or counts[key] < limit
    if admitted:
        counts[key] += 1
    try:
        yield admitted
    finally:
        if admitted:
            counts[key] -= 1
            if not counts[key]:
                del counts[key]
