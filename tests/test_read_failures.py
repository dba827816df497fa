"""Reads that keep failing after start-up: retried with backoff, logged once per interval,
recovered from; and the rules that say so (core/retry.py, the start-up schema checks)."""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
import websockets

from opspush.attach.attach import views_problem
from opspush.commands.runner import listen_problem
from opspush.core.retry import backoff, report_due
from opspush.database.mapping import DOMAIN
from opspush.database.migrations import schema_problem
from opspush.database.storage import create_pool
from tests.conftest import running_server, scratch_database
from tests.factories import Factory


@pytest.mark.parametrize(
    ("previous", "first", "ceiling", "wait"),
    [
        (0.0, 1.0, 10.0, 1.0),  # the first failure after a success
        (1.0, 1.0, 10.0, 2.0),
        (4.0, 1.0, 10.0, 8.0),
        (8.0, 1.0, 10.0, 10.0),  # capped
        (10.0, 1.0, 10.0, 10.0),
        (0.0, 0.25, 0.5, 0.25),
        (0.25, 0.25, 0.5, 0.5),
        (0.5, 0.25, 0.5, 0.5),
    ],
)
def test_backoff_doubles_up_to_its_ceiling(
    previous: float, first: float, ceiling: float, wait: float
) -> None:
    assert backoff(previous, first, ceiling) == wait


@pytest.mark.parametrize(
    ("reported_at", "now", "due"),
    [
        (None, 5.0, True),
        (0.0, 0.1, False),
        (0.0, 9.99, False),
        (0.0, 10.0, True),
        (3.0, 14.0, True),
    ],
)
def test_a_failure_is_reported_once_per_interval(
    reported_at: float | None, now: float, due: bool
) -> None:
    assert report_due(reported_at, now, 10.0) is due


KNOWN = ["001_schema", "002_default_capabilities", "003_notify"]


@pytest.mark.parametrize(
    ("applied", "problem"),
    [
        (None, "has no opspush schema"),
        (set(), "has no opspush schema"),
        ({"001_schema"}, "(without 002_default_capabilities, 003_notify)"),
        ({"001_schema", "003_notify"}, "(without 002_default_capabilities)"),
        (set(KNOWN), None),
        ({*KNOWN, "004_from_a_newer_opspush"}, None),  # a rolling deploy: still served
    ],
)
def test_schema_problem(applied: set[str] | None, problem: str | None) -> None:
    found = schema_problem(applied, KNOWN)
    assert found == problem if problem is None or "without" not in problem else problem in found


def _views(without: set[tuple[str, str]] = frozenset(), tables: Any = DOMAIN) -> Any:
    return {t: {c for c in DOMAIN[t] if (t, c) not in without} for t in tables}


@pytest.mark.parametrize(
    ("found", "problem"),
    [
        ({}, 'has no opspush views in schema "opspush"'),
        ({"something_else": {"x"}}, 'has no opspush views in schema "opspush"'),
        (_views(), None),
        ({**_views(), "extra": {"x"}}, None),
        (_views({("users", "id")}), "older than this opspush (without users.id)"),
        (
            _views(tables=["users"]),
            "(without workspaces, tenants, workspace_memberships and 5 more)",
        ),
    ],
)
def test_views_problem(found: dict[str, set[str]], problem: str | None) -> None:
    result = views_problem(found, "opspush")
    assert result is None if problem is None else result is not None and problem in result


@pytest.mark.parametrize(
    ("host", "error", "line"),
    [
        (
            "127.0.0.1",
            OSError(errno.EADDRINUSE, "Address in use"),
            "127.0.0.1:80 is already in use",
        ),
        ("::1", OSError(errno.EADDRINUSE, "Address in use"), "[::1]:80 is already in use"),
        (
            "999.1.1.1",
            socket.gaierror(-2, "Name or service not known"),
            "cannot listen on 999.1.1.1:80: Name or service not known",
        ),
        (
            "0.0.0.0",
            OSError(errno.EACCES, "Permission denied"),
            "cannot listen on 0.0.0.0:80: Permission denied",
        ),
    ],
)
def test_listen_problem_names_the_address(host: str, error: OSError, line: str) -> None:
    assert listen_problem(host, 80, error) == line


# -- a read that fails after start-up ---------------------------------------------------------


@pytest.fixture
async def own_database(postgres_server: dict[str, Any]) -> AsyncIterator[str]:
    """A database of this test's own: its tables are renamed away and back."""
    async with scratch_database(postgres_server["dsn"], "opspush_test_fail") as dsn:
        yield dsn


async def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Wait for a condition of the running server (polled; no fixed sleep)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def test_a_read_failing_after_start_up_backs_off_logs_once_and_recovers(
    own_database: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.INFO, logger="opspush")
    monkeypatch.setattr("opspush.engine.facts.FACTS_TIMEOUT", 1.0)  # a hello gives up sooner
    pool = await create_pool(own_database, 2)
    db = Factory(pool)
    try:
        workspace = await db.workspace()
        user = await db.user(workspace, "owner")
        newcomer = await db.user(workspace, "operator")  # no facts loaded for them yet
        run_id = await db.run(workspace, status="running")
        async with running_server(own_database, recheck_interval=1.0) as server:
            viewer = await server.connect(user)
            first = await viewer.subscribe(f"run:{run_id}")
            assert first["type"] == "state" and first["data"]["status"] == "running"
            stats = server.engine.stats
            errors_before, loads_before = stats.read_errors, stats.access_loads
            await pool.execute("ALTER TABLE users RENAME TO users_away")
            await pool.execute("ALTER TABLE operation_runs RENAME TO operation_runs_away")
            started = time.monotonic()

            # A hello meanwhile: its facts cannot load; 1013 once it gives up, promptly.
            async with websockets.connect(server.ws_url) as late:
                await late.send(f'{{"op":"hello","token":"{server.token(newcomer)}"}}')
                with pytest.raises(websockets.ConnectionClosed) as closed:
                    async with asyncio.timeout(3.0):
                        await late.recv()
                assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013
            async with httpx.AsyncClient() as client:
                answer = await client.get(
                    f"{server.http_url}/api/runs/{run_id}",
                    headers={"Authorization": f"Bearer {server.token(user)}"},
                )
            assert answer.status_code == 503 and answer.json() == {"error": "database unavailable"}

            # The run's reads retried after 1 and 2 s: three failures in some 3 s or more.
            await wait_for(lambda: stats.read_errors - errors_before >= 3, 20, "three failed reads")
            elapsed = time.monotonic() - started
            failed = [r for r in caplog.records if "database read" in r.getMessage()]
            # Per attempt, this was thousands of lines; once per 10 s, one per key at most.
            assert len(failed) <= 2 * (1 + int(elapsed // 10)) + 1, [r.getMessage() for r in failed]
            assert stats.read_errors - errors_before <= 4 + 2 * elapsed  # backed off
            assert stats.access_loads - loads_before <= 4 + 2 * elapsed
            assert "Traceback" not in caplog.text

            # Finished while the table was away (its notify trigger, which names the table,
            # set aside): the tick finds it when the table returns.
            async with pool.acquire() as connection, connection.transaction():
                await connection.execute("ALTER TABLE operation_runs_away DISABLE TRIGGER USER")
                await connection.execute(
                    """UPDATE operation_runs_away SET status = 'completed', outcome = 'succeeded'
                       WHERE id = $1""",
                    run_id,
                )
                await connection.execute("ALTER TABLE operation_runs_away ENABLE TRIGGER USER")
            await pool.execute("ALTER TABLE operation_runs_away RENAME TO operation_runs")
            await pool.execute("ALTER TABLE users_away RENAME TO users")
            final = await viewer.until(lambda f: f["type"] == "state" and f["interval"] is None, 20)
            assert final["data"]["status"] == "succeeded"
            end = await viewer.until(lambda f: f["type"] == "end", 10)
            assert end["reason"] == "terminal"
            await wait_for(lambda: server.engine.healthy, 15, "the engine healthy again")
            recovered = [r.getMessage() for r in caplog.records if "recovered" in r.getMessage()]
            assert any("(run)" in line for line in recovered), recovered
            await viewer.close()
    finally:
        await pool.close()
