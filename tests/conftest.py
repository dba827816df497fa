"""Fixtures: a real PostgreSQL, a real uvicorn server on a free port, real WebSocket clients.

Without DATABASE_URL the suite starts an embedded PostgreSQL (with pg_stat_statements);
with it, the suite creates a throwaway database on that server. Either way every session
gets its own freshly migrated database, dropped at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest
import uvicorn
import websockets
from websockets.asyncio.client import ClientConnection

from opspush.app import create_app
from opspush.commands.runner import uvicorn_config
from opspush.config import Settings
from opspush.core.auth import mint_token
from opspush.core.clock import Clock, ManualClock
from opspush.database.migrations import create_database
from opspush.database.storage import create_pool
from opspush.engine.engine import Engine
from opspush.service import Service
from tests.factories import Factory

SECRET = "opspush-test-secret-0123456789abcdef-0123456789abcdef-0123456789"  # 64+: HS512 too


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[dict[str, Any]]:
    """The PostgreSQL server: DATABASE_URL's, or an embedded one for this session."""
    url = os.environ.get("DATABASE_URL")
    if url:
        yield {"dsn": url, "embedded": None}
        return
    from opspush.database import embedded

    # A folder of our own: pytest's numbered temp folders are shared between concurrent runs.
    folder = tempfile.mkdtemp(prefix="opspush-test-pg-")
    server = embedded.start(os.path.join(folder, "data"), delete_on_stop=True)
    try:
        yield {"dsn": server.dsn, "embedded": server}
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.asynccontextmanager
async def scratch_database(admin_dsn: str, prefix: str = "opspush_test") -> AsyncIterator[str]:
    """A migrated database of a unique name, dropped at the end."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    dsn = await create_database(admin_dsn, name)
    try:
        yield dsn
    finally:
        admin = await asyncpg.connect(admin_dsn)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@pytest.fixture(scope="session")
async def database_dsn(postgres_server: dict[str, Any]) -> AsyncIterator[str]:
    async with scratch_database(postgres_server["dsn"]) as dsn:
        yield dsn


@pytest.fixture(scope="session")
async def pool(database_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(database_dsn, 4)
    try:
        yield pool
    finally:
        await pool.close()


@pytest.fixture
def db(pool: asyncpg.Pool) -> Factory:
    return Factory(pool)


def free_socket(port: int = 0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    return sock


def test_settings(**overrides: Any) -> Settings:
    base = Settings(
        secret=SECRET,
        recheck_interval=0.5,  # revocations land fast in tests
        hello_timeout=10.0,
        log_level="warning",
        drain_seconds=2.0,
        notify=False,  # the tick alone; tests of LISTEN/NOTIFY turn it on
    )
    return base.with_overrides(**overrides)


@dataclass
class RunningServer:
    settings: Settings
    service: Service
    port: int

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def engine(self) -> Engine:
        return self.service.engine

    def token(self, user_id: int, ttl: float = 3600) -> str:
        return mint_token(user_id, self.settings.secret, ttl=ttl)

    async def connect(self, user_id: int, **options: Any) -> Viewer:
        """A raw `websockets` client that has said hello; the welcome frame is checked."""
        connection = await websockets.connect(self.ws_url, max_size=2**24, **options)
        viewer = Viewer(connection)
        await viewer.send({"op": "hello", "token": self.token(user_id)})
        welcome = await viewer.recv()
        assert welcome["type"] == "welcome" and welcome["user_id"] == user_id, welcome
        return viewer


@dataclass
class Viewer:
    """A thin wrapper over a websockets connection speaking JSON frames."""

    connection: ClientConnection

    async def send(self, frame: dict[str, Any] | str) -> None:
        await self.connection.send(frame if isinstance(frame, str) else json.dumps(frame))

    async def recv(self, timeout: float = 10.0) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            frame: dict[str, Any] = json.loads(await self.connection.recv())
            return frame

    async def subscribe(self, ch: str) -> dict[str, Any]:
        """Subscribe and return the first frame for it (a state or an error)."""
        await self.send({"op": "subscribe", "ch": ch})
        return await self.recv()

    async def until(self, predicate: Any, timeout: float = 15.0) -> dict[str, Any]:
        """The first frame that satisfies predicate; others are skipped."""
        async with asyncio.timeout(timeout):
            while True:
                frame = await self.recv(timeout)
                if predicate(frame):
                    return frame

    async def closed(self, timeout: float = 10.0) -> int | None:
        """Wait for the server to close the socket; frames meanwhile are dropped."""
        async with asyncio.timeout(timeout):
            with contextlib.suppress(websockets.ConnectionClosed):
                while True:
                    await self.connection.recv()
        return self.connection.close_code

    async def close(self) -> None:
        await self.connection.close()


@contextlib.asynccontextmanager
async def running_server(
    dsn: str,
    *,
    clock: Clock | None = None,
    port: int = 0,
    http_base: type[asyncio.Protocol] | None = None,
    **overrides: Any,
) -> AsyncIterator[RunningServer]:
    """A real uvicorn server in this process; `port` 0 picks a free one; `http_base`, an
    HTTP parser other than uvicorn's "auto" choice (web/deadline.py)."""
    settings = test_settings(**overrides)
    app = create_app(settings, dsn, clock=clock)
    sock = free_socket(port)
    config = uvicorn_config(app, settings, http_base=http_base)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        async with asyncio.timeout(15):
            while not server.started:
                if task.done():
                    task.result()
                await asyncio.sleep(0.01)
        yield RunningServer(settings, app.state.service, sock.getsockname()[1])
    finally:
        server.should_exit = True
        await task
        sock.close()


@pytest.fixture(scope="session")
async def server(database_dsn: str) -> AsyncIterator[RunningServer]:
    """One server for the tests that need no special settings."""
    async with running_server(database_dsn) as running:
        yield running


@pytest.fixture
async def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def manual(database_dsn: str, clock: ManualClock) -> AsyncIterator[RunningServer]:
    """A server whose time moves only when the test says so."""
    async with running_server(database_dsn, clock=clock) as running:
        yield running


async def step(server: RunningServer, clock: ManualClock, seconds: float) -> None:
    """Let `seconds` pass and run the tick that is due then."""
    clock.advance(seconds)
    await server.engine.tick()


@pytest.fixture
async def viewers() -> AsyncIterator[list[Viewer]]:
    """Collects viewers a test opens, and closes them whatever happens."""
    opened: list[Viewer] = []
    yield opened
    for viewer in opened:
        with contextlib.suppress(Exception):
            await viewer.close()
