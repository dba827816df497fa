"""opspush as separate processes: several over one database, graceful SIGTERM, pings."""

from __future__ import annotations

import asyncio
import os
import resource
import signal
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

import websockets

from opspush.core.auth import mint_token
from tests.conftest import SECRET, Viewer, free_socket, running_server
from tests.factories import Factory


@asynccontextmanager
async def opspush_process(
    dsn: str, *, open_files: int | None = None, **env: str
) -> AsyncIterator[tuple[asyncio.subprocess.Process, int]]:
    """`opspush serve` in its own process, on a free port, started and (at exit) stopped;
    `open_files`, its soft and hard open-file limit."""
    sock = free_socket()
    port = sock.getsockname()[1]
    sock.close()
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OPSPUSH_")}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "opspush.commands.cli", "serve", "--port", str(port),
        env={**clean, "DATABASE_URL": dsn, "OPSPUSH_SECRET": SECRET, "OPSPUSH_NOTIFY": "1",
             "OPSPUSH_LOG_LEVEL": "info", **env},
        stderr=asyncio.subprocess.PIPE,
        preexec_fn=None if open_files is None else lambda: resource.setrlimit(
            resource.RLIMIT_NOFILE, (open_files, open_files)
        ),
    )  # fmt: skip
    assert process.stderr is not None
    try:
        async with asyncio.timeout(30):
            while b"Uvicorn running on" not in await process.stderr.readline():
                assert process.returncode is None
        yield process, port
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()


async def connect(port: int, user: int) -> Viewer:
    connection = await websockets.connect(f"ws://127.0.0.1:{port}/ws")
    viewer = Viewer(connection)
    await viewer.send({"op": "hello", "token": mint_token(user, SECRET)})
    assert (await viewer.recv())["type"] == "welcome"
    return viewer


async def test_two_processes_one_update_reaches_both_promptly(
    database_dsn: str, db: Factory
) -> None:
    ws = await db.workspace()
    user = await db.user(ws, "owner")
    five_minutes_ago = datetime.now(UTC) - timedelta(minutes=5)
    run = await db.run(ws, status="running", created_at=five_minutes_ago)
    async with (
        opspush_process(database_dsn) as (_, port_a),
        opspush_process(database_dsn) as (
            _,
            port_b,
        ),
    ):
        a, b = await connect(port_a, user), await connect(port_b, user)
        try:
            assert (await a.subscribe(f"run:{run}"))["interval"] == 10
            assert (await b.subscribe(f"run:{run}"))["interval"] == 10
            started = time.monotonic()
            await db.update_run(run, summary_counts={"total": 10, "processed": 5})
            # Well inside the 10 s interval: the notification woke both processes.
            frames = await asyncio.gather(a.recv(timeout=5), b.recv(timeout=5))
            latency = time.monotonic() - started
            assert all(f["data"]["progress"] == 0.5 for f in frames)
            print(f"commit-to-viewer on two processes: {latency * 1000:.0f} ms")
        finally:
            await a.close()
            await b.close()


async def test_sigterm_closes_sockets_with_1012_and_exits_0(database_dsn: str, db: Factory) -> None:
    ws = await db.workspace()
    user = await db.user(ws, "owner")
    async with opspush_process(database_dsn, OPSPUSH_DRAIN_SECONDS="5") as (process, port):
        viewer = await connect(port, user)
        await viewer.subscribe(f"operations:{ws}")
        process.send_signal(signal.SIGTERM)
        assert await viewer.closed(timeout=10) == 1012
        async with asyncio.timeout(15):
            assert await process.wait() == 0
        # New connections are refused once it has stopped.
        try:
            await websockets.connect(f"ws://127.0.0.1:{port}/ws", open_timeout=2)
        except (OSError, websockets.InvalidHandshake, TimeoutError):
            pass
        else:  # pragma: no cover
            raise AssertionError("a stopped server accepted a connection")


async def test_a_peer_that_stops_answering_pings_is_dropped(database_dsn: str, db: Factory) -> None:
    from tests.test_engine import raw_viewer

    ws = await db.workspace()
    user = await db.user(ws, "owner")
    async with running_server(database_dsn, ping_interval=0.3) as server:
        silent = await raw_viewer(server, user, [{"op": "subscribe", "ch": f"operations:{ws}"}])
        try:
            service = server.service
            # Wait for the session to exist, then for the keepalive to drop it.
            async with asyncio.timeout(10):
                await service.wait_sessions(bool)
                await service.wait_sessions(lambda sessions: not sessions)
            assert not service.per_user and not server.engine.watches
            assert service.stats.subscriptions["operations"] == 0
        finally:
            silent.close()
