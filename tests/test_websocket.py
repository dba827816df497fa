"""/ws as protocol.md describes it, against a real server, database and client."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import AsyncIterator

import httpx
import pytest
import uvicorn
import websockets
from websockets.exceptions import InvalidStatus

import opspush
from opspush.core.auth import mint_token
from opspush.core.clock import ManualClock
from opspush.web.connection import wire_text
from tests.conftest import SECRET, RunningServer, Viewer, running_server, step
from tests.factories import Factory


async def test_run_from_queued_to_succeeded_then_end_and_close_4000(
    server: RunningServer, db: Factory, viewers: list[Viewer]
) -> None:
    ws = await db.workspace()
    user = await db.user(ws, "owner")
    run = await db.run(ws, summary_counts={"total": 2, "processed": 0})
    viewer = await server.connect(user)
    viewers.append(viewer)
    first = await viewer.subscribe(f"run:{run}")
    assert first["type"] == "state" and first["ch"] == f"run:{run}"
    assert first["data"]["status"] == "queued" and first["interval"] == 1
    assert set(first["data"]) == {
        "id", "workspace_id", "workspace_name", "tenant_id", "tenant_name", "type", "status",
        "raw_status", "outcome",
        "summary_counts", "progress", "failure_summary", "created_at", "started_at",
        "completed_at",
    }  # fmt: skip
    steps = [
        ({"status": "running"}, "running", 0.0),
        ({"summary_counts": {"total": 2, "processed": 1}}, "running", 0.5),
        ({"status": "completed", "outcome": "succeeded",
          "summary_counts": {"total": 2, "processed": 2}}, "succeeded", 1.0),
    ]  # fmt: skip
    for columns, status, progress in steps:
        await db.update_run(run, **columns)
        frame = await viewer.recv()
        assert frame["type"] == "state"
        assert (frame["data"]["status"], frame["data"]["progress"]) == (status, progress)
    assert frame["interval"] is None  # the final state
    assert await viewer.recv() == {"type": "end", "ch": f"run:{run}", "reason": "terminal"}
    assert await viewer.closed() == 4000


async def test_finished_run_gets_final_state_and_end_at_once(
    server: RunningServer, db: Factory, viewers: list[Viewer]
) -> None:
    ws = await db.workspace()
    user = await db.user(ws, "owner")
    run = await db.run(ws, status="completed", outcome="partially_succeeded")
    other = await db.run(ws, status="running")
    viewer = await server.connect(user)
    viewers.append(viewer)
    await viewer.subscribe(f"run:{other}")
    state = await viewer.subscribe(f"run:{run}")
    assert state["data"]["status"] == "partial" and state["interval"] is None
    assert (await viewer.recv())["type"] == "end"
    # Another subscription is still open, so the socket stays open and usable.
    await viewer.send({"op": "unsubscribe", "ch": f"run:{other}"})
    assert (await viewer.subscribe("run:999999999"))["code"] == "not_found"


async def test_deleted_run_ends_with_gone(
    server: RunningServer, db: Factory, viewers: list[Viewer]
) -> None:
    ws = await db.workspace()
    user = await db.user(ws, "owner")
    run = await db.run(ws, status="running")
    viewer = await server.connect(user)
    viewers.append(viewer)
    await viewer.subscribe(f"run:{run}")
    await db.execute("DELETE FROM operation_runs WHERE id = $1", run)
    assert await viewer.recv() == {"type": "end", "ch": f"run:{run}", "reason": "gone"}


async def test_every_not_found_and_forbidden_row(
    server: RunningServer, db: Factory, viewers: list[Viewer]
) -> None:
    ws, other_ws = await db.workspace(), await db.workspace()
    t1, t2 = await db.tenant(ws), await db.tenant(ws)
    role = f"auditor-{ws}"  # a custom role: only its rows count
    await db.execute("INSERT INTO role_capabilities VALUES ($1, 'review_pack.view')", f"packs-{ws}")
    await db.execute(
        "INSERT INTO operation_type_capabilities VALUES ($1, 'secrets.view')", f"secret-{ws}"
    )
    owner = await db.user(ws, "owner")
    outsider = await db.user(other_ws, "owner")
    operator = await db.user(ws, "operator", tenants=[t1])
    custom = await db.user(ws, role, tenants=[t1])
    packs_only = await db.user(ws, f"packs-{ws}", tenants=[t1])
    run_t1 = await db.run(ws, t1, status="running")
    run_t2 = await db.run(ws, t2, status="running")
    tenantless = await db.run(ws, None, status="running")
    secret = await db.run(ws, t1, type=f"secret-{ws}", status="running")
    missing = 2**62
    table = [
        (outsider, f"run:{run_t1}", "not_found"),  # not a member
        (operator, f"run:{run_t2}", "not_found"),  # not entitled to the tenant
        (owner, f"run:{missing}", "not_found"),  # does not exist
        (custom, f"run:{run_t1}", "forbidden"),  # custom role without rows
        (packs_only, f"run:{tenantless}", "forbidden"),  # no operations.view
        (operator, f"run:{secret}", "forbidden"),  # lacks the run type's capability
        (outsider, f"review-pack:{t1}", "not_found"),
        (operator, f"review-pack:{t2}", "not_found"),
        (owner, f"review-pack:{missing}", "not_found"),
        (custom, f"review-pack:{t1}", "forbidden"),  # no review_pack.view
        (outsider, f"operations:{ws}", "not_found"),
        (owner, f"operations:{missing}", "not_found"),
        (packs_only, f"operations:{ws}", "forbidden"),
        # and the allowed ones, for contrast
        (owner, f"run:{secret}", "state"),
        (operator, f"run:{tenantless}", "state"),
        (operator, f"review-pack:{t1}", "state"),
        (packs_only, f"review-pack:{t1}", "state"),
        (operator, f"operations:{ws}", "state"),
    ]
    sockets = {}
    for user in {owner, outsider, operator, custom, packs_only}:
        sockets[user] = await server.connect(user)
        viewers.append(sockets[user])
    for user, ch, expected in table:
        frame = await sockets[user].subscribe(ch)
        assert frame["ch"] == ch
        if expected == "state":
            assert frame["type"] == "state", (user, ch, frame)
            if frame["interval"] is None:  # a card with no pack is final at once
                assert (await sockets[user].recv())["type"] == "end"
        else:
            assert (frame["type"], frame["code"]) == ("error", expected), (user, ch, frame)
            assert set(frame) == {"type", "ch", "code", "message"}  # nothing else leaks
    # A refused subscription leaves the socket open and usable.
    assert (await sockets[outsider].subscribe(f"operations:{other_ws}"))["type"] == "state"


async def test_wall_lists_only_runs_the_user_could_open(
    server: RunningServer, db: Factory, viewers: list[Viewer]
) -> None:
    ws = await db.workspace()
    t1, t2 = await db.tenant(ws), await db.tenant(ws)
    await db.execute(
        "INSERT INTO operation_type_capabilities VALUES ($1, 'secrets.view')", f"hidden-{ws}"
    )
    operator = await db.user(ws, "operator", tenants=[t1])
    runs = {
        "mine": await db.run(ws, t1, status="running"),
        "tenantless": await db.run(ws, None, status="queued"),
        "other tenant": await db.run(ws, t2, status="running"),
        "needs capability": await db.run(ws, t1, type=f"hidden-{ws}", status="running"),
    }
    viewer = await server.connect(operator)
    viewers.append(viewer)
    state = await viewer.subscribe(f"operations:{ws}")
    assert {r["id"] for r in state["data"]["runs"]} == {runs["mine"], runs["tenantless"]}


async def test_revoking_access_ends_subscriptions_with_revoked(
    server: RunningServer, db: Factory, viewers: list[Viewer]
) -> None:
    ws = await db.workspace()
    tenant = await db.tenant(ws)
    role = f"custom-{ws}"
    await db.execute(
        "INSERT INTO role_capabilities VALUES ($1, 'operations.view'), ($1, 'review_pack.view')",
        role,
    )
    by_entitlement = await db.user(ws, "operator", tenants=[tenant])
    by_membership = await db.user(ws, "readonly")
    by_capability = await db.user(ws, role, tenants=[tenant])
    run = await db.run(ws, tenant, status="running")
    a = await server.connect(by_entitlement)
    b = await server.connect(by_membership)
    c = await server.connect(by_capability)
    viewers += [a, b, c]
    assert (await a.subscribe(f"run:{run}"))["type"] == "state"
    assert (await b.subscribe(f"operations:{ws}"))["type"] == "state"
    assert (await c.subscribe(f"run:{run}"))["type"] == "state"

    await db.execute("DELETE FROM tenant_entitlements WHERE user_id = $1", by_entitlement)
    await db.execute("DELETE FROM workspace_memberships WHERE user_id = $1", by_membership)
    await db.execute(
        "DELETE FROM role_capabilities WHERE role = $1 AND capability = 'operations.view'", role
    )
    for viewer, ch in ((a, f"run:{run}"), (b, f"operations:{ws}"), (c, f"run:{run}")):
        frame = await viewer.until(lambda f: f["type"] == "end", timeout=10)
        assert frame == {"type": "end", "ch": ch, "reason": "revoked"}


async def test_malformed_frames_get_errors_and_the_socket_stays_usable(
    server: RunningServer, db: Factory, viewers: list[Viewer]
) -> None:
    ws = await db.workspace()
    user = await db.user(ws, "owner")
    viewer = await server.connect(user)
    viewers.append(viewer)
    bad = [
        ("not json", None, "bad_request"),
        ("[]", None, "bad_request"),
        ('{"op": "jump"}', None, "bad_request"),
        ('{"op": "subscribe"}', None, "bad_request"),
        ('{"op": "subscribe", "ch": "run:1 OR 1=1"}', "run:1 OR 1=1", "bad_request"),
        ('{"op": "subscribe", "ch": "run:-1"}', "run:-1", "bad_request"),
        ('{"op": "subscribe", "ch": "tenant:1"}', "tenant:1", "unknown_channel"),
        ('{"op": "pause", "reason": "nap"}', None, "bad_request"),
        ('{"op": "hello", "token": "again"}', None, "bad_request"),
    ]
    for text, ch, code in bad:
        await viewer.send(text)
        frame = await viewer.recv()
        assert (frame["type"], frame["ch"], frame["code"]) == ("error", ch, code), text
    await viewer.connection.send(b"\x00binary")
    assert (await viewer.recv())["code"] == "bad_request"
    assert (await viewer.subscribe(f"operations:{ws}"))["type"] == "state"


async def test_a_non_canonical_id_is_refused(
    server: RunningServer, db: Factory, viewers: list[Viewer]
) -> None:
    """`run:01` would watch run 1 with frames named `run:1`: refused, as a bad id is."""
    ws = await db.workspace()
    viewer = await server.connect(await db.user(ws, "owner"))
    viewers.append(viewer)
    run = await db.run(ws, status="running")
    for ch in (f"run:0{run}", f"operations:00{ws}"):
        frame = await viewer.subscribe(ch)
        assert (frame["type"], frame["ch"], frame["code"]) == ("error", ch, "bad_request"), frame
    assert (await viewer.subscribe(f"run:{run}"))["type"] == "state"


async def test_subscription_limit(database_dsn: str, db: Factory) -> None:
    ws = await db.workspace()
    user = await db.user(ws, "owner")
    runs = [await db.run(ws, status="running") for _ in range(4)]
    async with running_server(database_dsn, max_subscriptions=3) as limited:
        viewer = await limited.connect(user)
        try:
            for run in runs[:3]:
                assert (await viewer.subscribe(f"run:{run}"))["type"] == "state"
            frame = await viewer.subscribe(f"run:{runs[3]}")
            assert frame["code"] == "too_many_subscriptions"
            await viewer.send({"op": "unsubscribe", "ch": f"run:{runs[0]}"})
            assert (await viewer.subscribe(f"run:{runs[3]}"))["type"] == "state"
        finally:
            await viewer.close()


async def test_rate_limit_then_4429(database_dsn: str, db: Factory) -> None:
    user = await db.user()
    async with running_server(database_dsn, rate_per_second=1, rate_burst=5) as limited:
        viewer = await limited.connect(user)
        for _ in range(5):
            await viewer.send({"op": "resume"})  # allowed: no reply
        await viewer.send({"op": "resume"})
        assert (await viewer.recv())["code"] == "rate_limited"
        for _ in range(10):
            await viewer.send({"op": "resume"})
        assert await viewer.closed() == 4429


async def test_runs_carry_the_workspace_and_tenant_names(
    server: RunningServer, db: Factory, viewers: list[Viewer]
) -> None:
    ws = await db.workspace("Woodgrove Operations")
    tenant = await db.tenant(ws, "Fabrikam")
    user = await db.user(ws, "owner")
    with_tenant, tenantless = await db.run(ws, tenant), await db.run(ws)
    viewer = await server.connect(user)
    viewers.append(viewer)
    data = (await viewer.subscribe(f"run:{with_tenant}"))["data"]
    assert (data["workspace_name"], data["tenant_name"]) == ("Woodgrove Operations", "Fabrikam")
    data = (await viewer.subscribe(f"run:{tenantless}"))["data"]
    assert (data["workspace_name"], data["tenant_name"]) == ("Woodgrove Operations", None)
    wall = (await viewer.subscribe(f"operations:{ws}"))["data"]
    assert {run["tenant_name"] for run in wall["runs"]} == {"Fabrikam", None}


async def test_index_page_and_no_favicon_404(server: RunningServer) -> None:
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        index = await http.get("/")
        icon = await http.get("/favicon.ico")
    assert index.status_code == 200 and 'href="/wall/1"' in index.text
    assert icon.status_code == 204


async def test_frame_too_large_closes_1009(server: RunningServer, db: Factory) -> None:
    user = await db.user()
    viewer = await server.connect(user)
    await viewer.send(json.dumps({"op": "resume", "pad": "x" * (64 * 1024)}))
    assert await viewer.closed() == 1009


async def test_text_not_utf8_closes_1007_logged_at_info(
    database_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A raw socket: no client library would send a text frame that is not UTF-8."""
    caplog.set_level(logging.INFO, logger="opspush.websocket")  # the /ws connection's
    uvicorn_log = logging.getLogger("uvicorn.error")
    async with running_server(database_dsn, log_level="info") as running:
        # uvicorn's loggers do not reach the root, and its configuration (done by now)
        # replaces their handlers: listen on its own.
        uvicorn_log.addHandler(caplog.handler)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", running.port)
            writer.write(
                b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
            )
            async with asyncio.timeout(10):
                response = await reader.readuntil(b"\r\n\r\n")
                assert response.startswith(b"HTTP/1.1 101"), response
                payload, mask = b'{"op":"hello","token":"\xff\xfe"}', b"\x01\x02\x03\x04"
                masked = bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))
                writer.write(bytes([0x81, 0x80 | len(payload)]) + mask + masked)
                head = await reader.readexactly(2)
                body = await reader.readexactly(head[1] & 0x7F)
            writer.close()
        finally:
            uvicorn_log.removeHandler(caplog.handler)
    assert head[0] == 0x88 and int.from_bytes(body[:2], "big") == 1007
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    assert [r for r in caplog.records if r.levelno == logging.INFO and "1007" in r.getMessage()]
    assert "Traceback" not in caplog.text


@pytest.mark.parametrize(
    "token",
    [
        pytest.param("not-a-token", id="garbage"),
        pytest.param(mint_token(1, "another-secret-of-32-characters!!"), id="wrong key"),
        pytest.param(mint_token(1, SECRET, ttl=-5), id="expired"),
    ],
)
async def test_bad_tokens_close_4401(server: RunningServer, token: str) -> None:
    async with websockets.connect(server.ws_url) as connection:
        await connection.send(json.dumps({"op": "hello", "token": token}))
        viewer = Viewer(connection)
        assert await viewer.closed() == 4401


async def test_unknown_user_closes_4401(server: RunningServer) -> None:
    async with websockets.connect(server.ws_url) as connection:
        await connection.send(json.dumps({"op": "hello", "token": server.token(2**40)}))
        assert await Viewer(connection).closed() == 4401


async def test_first_frame_must_be_hello(server: RunningServer) -> None:
    async with websockets.connect(server.ws_url) as connection:
        await connection.send(json.dumps({"op": "subscribe", "ch": "run:1"}))
        assert await Viewer(connection).closed() == 4401


async def test_no_hello_closes_4408(database_dsn: str) -> None:
    async with (
        running_server(database_dsn, hello_timeout=0.3) as impatient,
        websockets.connect(impatient.ws_url) as connection,
    ):
        assert await Viewer(connection).closed() == 4408


async def test_token_expiring_on_an_open_socket_closes_4401(
    server: RunningServer, db: Factory
) -> None:
    ws = await db.workspace()
    user = await db.user(ws, "owner")
    async with websockets.connect(server.ws_url) as connection:
        viewer = Viewer(connection)
        await viewer.send({"op": "hello", "token": server.token(user, ttl=2)})
        assert (await viewer.recv())["type"] == "welcome"
        assert (await viewer.subscribe(f"operations:{ws}"))["type"] == "state"
        assert await viewer.closed(timeout=8) == 4401


@pytest.fixture
async def strict(database_dsn: str) -> AsyncIterator[RunningServer]:
    async with running_server(
        database_dsn, allowed_origins=frozenset({"https://console.example"})
    ) as running:
        yield running


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        ("https://console.example", True),
        ("https://console.example.evil", False),  # exact, not a prefix
        ("https://evil.example", False),
        ("http://console.example", False),  # the scheme counts
        ("null", False),
        (None, True),  # no Origin: not a browser
    ],
)
async def test_origin_check(strict: RunningServer, origin: str | None, allowed: bool) -> None:
    options = {} if origin is None else {"origin": origin}
    if allowed:
        async with websockets.connect(strict.ws_url, **options):  # type: ignore[arg-type]
            pass
    else:
        with pytest.raises(InvalidStatus) as refused:
            async with websockets.connect(strict.ws_url, **options):  # type: ignore[arg-type]
                pass
        assert refused.value.response.status_code == 403


async def test_same_origin_by_default(server: RunningServer) -> None:
    async with websockets.connect(server.ws_url, origin=server.http_url):  # type: ignore[arg-type]
        pass
    with pytest.raises(InvalidStatus):
        async with websockets.connect(server.ws_url, origin="http://evil.example"):  # type: ignore[arg-type]
            pass


async def test_health_readiness_and_metrics(
    server: RunningServer, db: Factory, viewers: list[Viewer]
) -> None:
    ws = await db.workspace()
    user = await db.user(ws, "owner")
    viewer = await server.connect(user)
    viewers.append(viewer)
    await viewer.subscribe(f"operations:{ws}")
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        assert (await http.get("/healthz")).text == "ok"
        assert (await http.get("/readyz")).status_code == 200
        text = (await http.get("/metrics")).text
    for name in (
        "opspush_sockets_open",
        'opspush_subscriptions{kind="operations"}',
        'opspush_channels{kind="run"}',
        'opspush_reads_total{kind="operations"}',
        "opspush_read_batch_size_count",
        "opspush_states_pushed_total",
        'opspush_ends_total{reason="terminal"}',
        'opspush_errors_total{code="not_found"}',
        "opspush_tick_lag_seconds_sum",
    ):
        assert name in text, name


async def test_http_api_is_authorized_like_the_channels(server: RunningServer, db: Factory) -> None:
    ws = await db.workspace()
    t1, t2 = await db.tenant(ws), await db.tenant(ws)
    operator = await db.user(ws, "operator", tenants=[t1])
    custom = await db.user(ws, f"nobody-{ws}", tenants=[t1])
    run, hidden = await db.run(ws, t1, status="running"), await db.run(ws, t2)
    await db.pack(ws, t1, status="generating")

    async def get(path: str, user: int | None) -> httpx.Response:
        headers = {} if user is None else {"Authorization": f"Bearer {server.token(user)}"}
        async with httpx.AsyncClient(base_url=server.http_url) as http:
            return await http.get(path, headers=headers)

    ok = await get(f"/api/runs/{run}", operator)
    assert ok.status_code == 200
    assert ok.json()["data"]["status"] == "running" and ok.json()["interval"] == 1
    assert (await get(f"/api/runs/{hidden}", operator)).status_code == 404
    assert (await get(f"/api/runs/{2**62}", operator)).status_code == 404
    assert (await get(f"/api/runs/{run}", custom)).status_code == 403
    assert (await get(f"/api/runs/{run}", None)).status_code == 401
    card = await get(f"/api/tenants/{t1}/review-pack", operator)
    assert card.json()["data"]["pack"]["status"] == "generating"
    assert (await get(f"/api/tenants/{t2}/review-pack", operator)).status_code == 404
    assert (await get(f"/api/tenants/{t1}/review-pack", custom)).status_code == 403


async def test_fresh_reads_are_shared_and_counted_by_the_database(
    postgres_server: dict[str, object],
    database_dsn: str,
    db: Factory,
) -> None:
    """50 viewers of one run: the database's own statement count equals the engine's."""
    if not await db.pool.fetchval(
        "SELECT count(*) FROM pg_extension WHERE extname = 'pg_stat_statements'"
    ):
        pytest.skip("pg_stat_statements is not preloaded on this DATABASE_URL's server")
    ws = await db.workspace()
    user = await db.user(ws, "owner")
    run = await db.run(ws, status="running")
    count_sql = """SELECT coalesce(sum(calls), 0) FROM pg_stat_statements
                   WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
                     AND query LIKE '%FROM operation_runs r WHERE r.id = ANY%'"""
    async with running_server(database_dsn, max_connections_per_user=0) as fresh:
        viewers = [await fresh.connect(user) for _ in range(50)]
        try:
            before_db = await db.pool.fetchval(count_sql)
            before = fresh.service.stats.reads["run"]
            for viewer in viewers:
                await viewer.subscribe(f"run:{run}")
            for processed in (1, 2, 3):
                await db.update_run(run, summary_counts={"total": 3, "processed": processed})
                for viewer in viewers:
                    frame = await viewer.recv()
                    assert frame["data"]["summary_counts"]["processed"] == processed
            engine_reads = fresh.service.stats.reads["run"] - before
            db_reads = await db.pool.fetchval(count_sql) - before_db
        finally:
            await asyncio.gather(*(v.close() for v in viewers))
    # Three changes, each seen by 50 viewers, from a handful of reads (one per second).
    assert 3 <= engine_reads <= 12
    assert db_reads == engine_reads


async def test_reconnect_storm_is_admitted_at_a_bounded_rate(
    database_dsn: str, db: Factory
) -> None:
    user = await db.user()
    async with running_server(database_dsn, admission_rate=0.01, admission_burst=3) as gated:
        admitted = [await gated.connect(user) for _ in range(3)]
        try:
            async with websockets.connect(gated.ws_url) as refused:
                assert await Viewer(refused).closed() == 4429  # back off, then come back
        finally:
            for viewer in admitted:
                await viewer.close()


async def test_idle_viewers_hold_no_task_and_a_state_is_encoded_once_for_all(
    manual: RunningServer, clock: ManualClock, db: Factory, viewers: list[Viewer]
) -> None:
    """The fan-out's design (web/websocket.py): no task per idle socket, and a state frame
    serialized once per channel however many viewers it goes to."""
    ws = await db.workspace()
    user = await db.user(ws, "owner")
    run = await db.run(ws, status="running", summary_counts={"total": 10, "processed": 0})

    # The server's code: ours, and uvicorn's (which ran a task per ASGI socket).
    server_code = (os.path.dirname(opspush.__file__), os.path.dirname(uvicorn.__file__))

    def server_tasks() -> int:
        files = [t.get_coro().cr_code.co_filename for t in asyncio.all_tasks()]  # type: ignore[union-attr]
        return sum(1 for f in files if f.startswith(server_code))

    before = server_tasks()
    for _ in range(12):
        viewer = await manual.connect(user)
        viewers.append(viewer)
        assert (await viewer.subscribe(f"run:{run}"))["type"] == "state"
    assert server_tasks() == before

    encoded = wire_text.cache_info().misses
    await db.update_run(run, summary_counts={"total": 10, "processed": 1})
    await step(manual, clock, 1.0)
    for viewer in viewers:
        state = await viewer.recv()
        assert state["data"]["summary_counts"]["processed"] == 1
    assert wire_text.cache_info().misses == encoded + 1  # one encoding for twelve viewers
