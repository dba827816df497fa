"""Load faults: sockets dropped abruptly by the thousand, a reconnect storm, a viewer that
never reads."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import websockets

from opspush.core import protocol
from tests.conftest import running_server
from tests.factories import Factory
from tests.reliability.conftest import assert_no_leak, counts, wait_until, watch_logs

CHURN = 1000  # sockets opened and dropped abruptly, loopback only
STORM = 300  # viewers reconnecting at once


async def test_sockets_dropped_abruptly(database_dsn: str, db: Factory, record: Any) -> None:
    workspace = await db.workspace()
    user = await db.user(workspace, "owner")
    run_id = await db.run(workspace, status="running")
    # 100 sockets of one user at a time from one address: the limits are not what is tested.
    async with running_server(
        database_dsn, max_connections_per_user=0, max_connections_per_address=0
    ) as server:
        sentinel = await server.connect(user)
        assert (await sentinel.subscribe(f"run:{run_id}"))["type"] == "state"
        before = counts(server)
        token = server.token(user)
        with watch_logs() as logs:

            async def drop(index: int) -> None:
                ws = await websockets.connect(server.ws_url)
                stage = index % 4
                if stage >= 1:
                    await ws.send(json.dumps({"op": "hello", "token": token}))
                if stage >= 2:
                    await ws.recv()
                    await ws.send(json.dumps({"op": "subscribe", "ch": f"run:{run_id}"}))
                if stage == 3:
                    await ws.recv()
                ws.transport.abort()  # no close frame, a reset

            for start in range(0, CHURN, 100):
                await asyncio.gather(*(drop(i) for i in range(start, start + 100)))
            await db.update_run(run_id, summary_counts={"total": 5, "processed": 1})
            await sentinel.until(lambda f: f.get("data", {}).get("progress") == 0.2)
            await assert_no_leak(server, before)
            logs.assert_clean()
        await sentinel.close()
    record(
        "hostile",
        "sockets opened and dropped abruptly (TCP reset) before hello, after hello, "
        "after subscribe, after the first state",
        CHURN,
        "no ERROR log; sessions, tasks, watches, sockets and fds back to their baseline; "
        "another viewer unaffected",
    )


async def test_reconnect_storm(database_dsn: str, db: Factory, record: Any) -> None:
    workspace = await db.workspace()
    users = [await db.user(workspace, "owner") for _ in range(10)]
    run_id = await db.run(workspace, status="running")
    async with running_server(database_dsn) as server:
        before = counts(server)
        with watch_logs() as logs:

            async def viewer(index: int) -> str:
                ws = await websockets.connect(server.ws_url, open_timeout=30)
                try:
                    user = users[index % len(users)]
                    await ws.send(json.dumps({"op": "hello", "token": server.token(user)}))
                    welcome = json.loads(await asyncio.wait_for(ws.recv(), 30))
                    assert welcome["type"] == "welcome"
                    await ws.send(json.dumps({"op": "subscribe", "ch": f"run:{run_id}"}))
                    state = json.loads(await asyncio.wait_for(ws.recv(), 30))
                    assert state["type"] == "state"
                    return "served"
                except websockets.ConnectionClosed:
                    assert ws.close_code in (protocol.CLOSE_TOO_MANY, 1013), ws.close_code
                    return f"close {ws.close_code}"
                finally:
                    await ws.close()

            outcomes = await asyncio.gather(*(viewer(i) for i in range(STORM)))
            await assert_no_leak(server, before)
            logs.assert_clean()
    assert set(outcomes) <= {"served", "close 4429", "close 1013"}
    assert outcomes.count("served") > 0
    record(
        "fault",
        "reconnect storm: viewers connecting, saying hello and subscribing all at once",
        STORM,
        "each served or closed with 4429/1013; access facts loaded in shared batches; "
        "no ERROR log; no leak",
    )


async def test_viewer_that_never_reads(database_dsn: str, db: Factory, record: Any) -> None:
    workspace = await db.workspace()
    user = await db.user(workspace, "owner")
    big = [{"code": "E", "message": "x" * 2000}] * 50  # ~100 KB per state
    runs = [await db.run(workspace, status="running") for _ in range(20)]
    await db.execute(
        "UPDATE operation_runs SET failure_summary = $1 WHERE id = ANY($2::bigint[])", big, runs
    )
    async with running_server(database_dsn, send_timeout=1.0, max_subscriptions=20) as server:
        before = counts(server)
        with watch_logs() as logs:
            other = await server.connect(user)
            assert (await other.subscribe(f"run:{runs[0]}"))["type"] == "state"
            slow = await server.connect(user, max_queue=1)
            for run_id in runs:
                await slow.send({"op": "subscribe", "ch": f"run:{run_id}"})

            def slow_session() -> Any:
                found = [s for s in server.service.sessions if len(s.channels) == len(runs)]
                return found[0] if found else None

            await wait_until(lambda: slow_session() is not None, 10, "the slow session")
            session = slow_session()
            worst = 0
            step = 0
            while session in server.service.sessions:
                step += 1
                await db.execute(
                    "UPDATE operation_runs SET summary_counts = $1 WHERE id = ANY($2::bigint[])",
                    {"total": 1000, "processed": step},
                    runs,
                )
                # The other viewer keeps getting its changes.
                await other.until(lambda f, s=step: f.get("data", {}).get("progress") == s / 1000)
                worst = max(worst, len(session.outbox))
                assert step < 60, "the slow viewer was never closed"
            assert worst <= len(runs)  # at most one pending state per subscription
            with contextlib.suppress(Exception):
                slow.connection.transport.abort()
            await other.close()
            await assert_no_leak(server, before)
            logs.assert_clean()
    record(
        "fault",
        "a viewer that never reads, 20 subscriptions of ~100 KB states changing every second",
        1,
        "closed (4429) once a send blocked for `OPSPUSH_SEND_TIMEOUT`; its queue held at "
        "most one state per subscription; the other viewer got every change; no leak",
    )
