"""Serving from the views of a Laravel-shaped console database, as a least-privilege role.

The console writes its own tables with plain SQL (server/host_demo.Console); opspush reads
them only through the views of examples/laravel/opspush.toml. docs/domain.md and
docs/protocol.md hold unchanged: these are the same lifecycles as the standalone tests, on the
host's layout.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from opspush.attach import host_demo
from opspush.core.clock import ManualClock
from opspush.core.outcomes import failure_reasons, outcome_from_counts
from tests.attach.conftest import Host, attached_server
from tests.conftest import RunningServer, Viewer, running_server
from tests.reliability.conftest import wait_until


def is_end(frame: dict[str, Any]) -> bool:
    return frame["type"] == "end"


async def test_run_lifecycle_to_its_terminal_end(
    attached: RunningServer, host: Host, viewers: list[Viewer]
) -> None:
    console = host.console
    ws = await console.workspace()
    tenant = await console.tenant(ws, "Fabrikam")
    owner = await console.user(ws, "owner")
    run = await console.run(ws, tenant, user_id=owner, summary_counts={"total": 4, "processed": 0})
    viewer = await attached.connect(owner)
    viewers.append(viewer)
    first = await viewer.subscribe(f"run:{run}")
    assert first["type"] == "state" and first["interval"] == 1, first
    data = first["data"]
    assert (data["status"], data["raw_status"], data["outcome"]) == ("queued", "queued", "pending")
    assert data["summary_counts"] == {"total": 4, "processed": 0} and data["progress"] == 0
    assert (data["workspace_id"], data["tenant_id"], data["type"]) == (ws, tenant, "inventory.sync")

    await console.start_run(run)
    frame = await viewer.until(lambda f: f["data"]["status"] == "running")
    assert frame["data"]["started_at"] is not None
    await console.progress(run, {"total": 4, "processed": 2})
    frame = await viewer.until(lambda f: f["data"]["progress"] == 0.5)
    await console.complete_run(run, "partially_succeeded", [{"code": "x.y", "message": "m"}])
    frame = await viewer.until(lambda f: f["type"] == "end" or f["data"]["status"] == "partial")
    assert frame["type"] == "state" and frame["interval"] is None
    assert frame["data"]["failure_summary"] == [{"code": "x.y", "message": "m"}]
    assert await viewer.recv() == {"type": "end", "ch": f"run:{run}", "reason": "terminal"}
    assert await viewer.closed() == 4000


async def test_naive_utc_timestamps_read_in_the_mapping_zone_not_the_session_zone(
    attached: RunningServer, host: Host, viewers: list[Viewer]
) -> None:
    """The console database's TimeZone is America/New_York (see conftest); Laravel wrote UTC."""
    console = host.console
    ws = await console.workspace()
    owner = await console.user(ws, "owner")
    run = await console.run(ws)
    await host.pool.execute(
        """UPDATE operation_runs SET status = 'completed', outcome = 'succeeded',
               created_at = '2026-01-02 03:04:05', started_at = '2026-01-02 03:04:06',
               completed_at = '2026-01-02 03:05:00' WHERE id = $1""",
        run,
    )
    viewer = await attached.connect(owner)
    viewers.append(viewer)
    data = (await viewer.subscribe(f"run:{run}"))["data"]
    assert (data["created_at"], data["started_at"], data["completed_at"]) == (
        "2026-01-02T03:04:05Z",
        "2026-01-02T03:04:06Z",
        "2026-01-02T03:05:00Z",
    )
    assert data["status"] == "succeeded"


async def test_review_pack_card_from_queued_to_ready(
    attached: RunningServer, host: Host, viewers: list[Viewer]
) -> None:
    console = host.console
    ws = await console.workspace()
    tenant = await console.tenant(ws)
    operator = await console.user(ws, "operator", [tenant])
    pack = await console.pack(ws, tenant, operator)
    viewer = await attached.connect(operator)
    viewers.append(viewer)
    first = await viewer.subscribe(f"review-pack:{tenant}")
    assert first["data"]["pack"]["status"] == "queued" and first["interval"] == 10
    assert first["data"]["pack"]["summary"] == {}
    await console.pack_status(pack, "generating")
    await console.pack_ready(pack, '{"policies": 42, "findings": 7}')
    attached.engine.wake_all()  # the card's interval is 10 s; the tick would get there too
    frame = await viewer.until(lambda f: f["data"]["pack"]["status"] == "ready")
    assert frame["data"]["pack"]["summary"] == {"policies": 42, "findings": 7}
    assert frame["data"]["pack"]["file_size"] == 123456 and frame["interval"] is None
    assert await viewer.until(is_end) == {
        "type": "end",
        "ch": f"review-pack:{tenant}",
        "reason": "terminal",
    }


async def test_the_wall_lists_only_what_the_user_may_open(
    attached: RunningServer, host: Host, viewers: list[Viewer]
) -> None:
    console = host.console
    ws = await console.workspace()
    mine, other = await console.tenant(ws), await console.tenant(ws)
    readonly = await console.user(ws, "readonly", [mine])
    tenantless = await console.run(ws)
    visible = await console.run(ws, mine, status="running")
    await console.run(ws, other, status="running")  # not entitled: never on this wall
    viewer = await attached.connect(readonly)
    viewers.append(viewer)
    first = await viewer.subscribe(f"operations:{ws}")
    assert first["type"] == "state", first
    assert sorted(r["id"] for r in first["data"]["runs"]) == sorted([tenantless, visible])
    await console.complete_run(visible)
    frame = await viewer.until(
        lambda f: any(r["id"] == visible and r["status"] == "succeeded" for r in f["data"]["runs"])
    )
    assert frame["type"] == "state"


async def test_not_found_and_forbidden_as_on_the_pages(
    attached: RunningServer, host: Host, viewers: list[Viewer]
) -> None:
    console = host.console
    ws = await console.workspace()
    tenant = await console.tenant(ws)
    run = await console.run(ws, tenant)
    tenantless = await console.run(ws)
    stranger = await console.user(await console.workspace(), "owner")
    unentitled = await console.user(ws, "operator")  # member, no tenant
    auditor = await console.user(ws, "auditor", [tenant])  # a custom role with no permissions
    typed = await console.run(ws, type="directory.export")
    await host.pool.execute(
        """INSERT INTO operation_type_permissions (operation_type, permission_name)
           VALUES ('directory.export', 'directory.export.view')"""
    )
    operator = await console.user(ws, "operator", [tenant])
    cases = [
        (stranger, f"run:{run}", "not_found"),
        (stranger, f"operations:{ws}", "not_found"),
        (unentitled, f"run:{run}", "not_found"),
        (unentitled, f"review-pack:{tenant}", "not_found"),
        (auditor, f"run:{run}", "forbidden"),
        (auditor, f"review-pack:{tenant}", "forbidden"),
        (auditor, f"operations:{ws}", "forbidden"),
        (operator, f"run:{typed}", "forbidden"),  # the role lacks the type's extra capability
        (operator, f"run:{2**40}", "not_found"),
    ]
    for user, ch, code in cases:
        viewer = await attached.connect(user)
        viewers.append(viewer)
        frame = await viewer.subscribe(ch)
        assert (frame["type"], frame.get("code")) == ("error", code), (user, ch, frame)
    viewer = await attached.connect(operator)
    viewers.append(viewer)
    assert (await viewer.subscribe(f"run:{tenantless}"))["type"] == "state"


async def test_a_soft_deleted_membership_revokes_and_a_soft_deleted_tenant_is_gone(
    attached: RunningServer, host: Host, viewers: list[Viewer]
) -> None:
    console = host.console
    ws = await console.workspace()
    tenant = await console.tenant(ws)
    operator = await console.user(ws, "operator", [tenant])
    run = await console.run(ws, tenant, status="running")
    await console.pack(ws, tenant)
    viewer = await attached.connect(operator)
    viewers.append(viewer)
    assert (await viewer.subscribe(f"run:{run}"))["type"] == "state"
    assert (await viewer.subscribe(f"review-pack:{tenant}"))["type"] == "state"
    await host.pool.execute(
        "UPDATE tenants SET deleted_at = now() AT TIME ZONE 'UTC' WHERE id = $1", tenant
    )
    attached.engine.wake_all()
    ends = set()
    for _ in range(2):
        end = await viewer.until(is_end)
        ends.add((end["ch"], end["reason"]))
    # The card's tenant is gone, and so is the run in it.
    assert ends == {(f"review-pack:{tenant}", "gone"), (f"run:{run}", "gone")}
    assert await viewer.closed() == 4000


async def test_a_run_whose_tenant_is_soft_deleted_ends_gone(
    notified: RunningServer, host: Host, viewers: list[Viewer]
) -> None:
    """The tenant's trigger wakes the runs in it and the walls listing them (clock still)."""
    console = host.console
    ws = await console.workspace()
    kept, dropped = await console.tenant(ws), await console.tenant(ws)
    operator = await console.user(ws, "operator", [kept, dropped])
    runs = {t: await console.run(ws, t, status="running") for t in (kept, dropped)}
    viewer = await notified.connect(operator)
    viewers.append(viewer)
    assert (await viewer.subscribe(f"run:{runs[dropped]}"))["type"] == "state"
    wall = await viewer.subscribe(f"operations:{ws}")
    assert sorted(r["id"] for r in wall["data"]["runs"]) == sorted(runs.values())
    await host.pool.execute(
        "UPDATE tenants SET deleted_at = now() AT TIME ZONE 'UTC' WHERE id = $1", dropped
    )
    frames = [await viewer.recv(timeout=5), await viewer.recv(timeout=5)]
    assert {"type": "end", "ch": f"run:{runs[dropped]}", "reason": "gone"} in frames, frames
    (refiltered,) = [f for f in frames if f["ch"] == f"operations:{ws}"]
    assert [r["id"] for r in refiltered["data"]["runs"]] == [runs[kept]]


async def test_a_soft_deleted_workspace_ends_its_runs_and_cards_gone(
    notified: RunningServer, host: Host, viewers: list[Viewer]
) -> None:
    console = host.console
    ws = await console.workspace()
    tenant = await console.tenant(ws)
    operator = await console.user(ws, "operator", [tenant])
    run = await console.run(ws, tenant, status="running")
    await console.pack(ws, tenant)
    viewer = await notified.connect(operator)
    viewers.append(viewer)
    channels = [f"run:{run}", f"review-pack:{tenant}", f"operations:{ws}"]
    for ch in channels:
        assert (await viewer.subscribe(ch))["type"] == "state"
    await host.pool.execute(
        "UPDATE workspaces SET deleted_at = now() AT TIME ZONE 'UTC' WHERE id = $1", ws
    )
    ends = [await viewer.until(is_end, timeout=5) for _ in channels]
    assert {(end["ch"], end["reason"]) for end in ends} == {(ch, "gone") for ch in channels}
    assert await viewer.closed() == 4000


async def test_a_run_whose_tenant_is_soft_deleted_ends_gone_by_the_tick(
    attached: RunningServer, host: Host, viewers: list[Viewer]
) -> None:
    """Without its trigger's wake-up, the run's next read finds it gone: never a state with
    a null `tenant_name`."""
    console = host.console
    ws = await console.workspace()
    tenant = await console.tenant(ws)
    operator = await console.user(ws, "operator", [tenant])
    run = await console.run(ws, tenant, status="running")  # read every second
    viewer = await attached.connect(operator)
    viewers.append(viewer)
    assert (await viewer.subscribe(f"run:{run}"))["data"]["tenant_name"] is not None
    await host.pool.execute(
        "UPDATE tenants SET deleted_at = now() AT TIME ZONE 'UTC' WHERE id = $1", tenant
    )
    assert await viewer.recv() == {"type": "end", "ch": f"run:{run}", "reason": "gone"}
    assert await viewer.closed() == 4000


async def test_membership_removal_revokes(
    attached: RunningServer, host: Host, viewers: list[Viewer]
) -> None:
    console = host.console
    ws = await console.workspace()
    readonly = await console.user(ws, "readonly")
    run = await console.run(ws, status="running")
    viewer = await attached.connect(readonly)
    viewers.append(viewer)
    assert (await viewer.subscribe(f"run:{run}"))["type"] == "state"
    await console.remove_member(ws, readonly)
    assert await viewer.until(is_end) == {"type": "end", "ch": f"run:{run}", "reason": "revoked"}


async def test_garbage_json_reads_empty_for_that_row_only_and_is_logged_once(
    attached: RunningServer, host: Host, viewers: list[Viewer], caplog: pytest.LogCaptureFixture
) -> None:
    console = host.console
    ws = await console.workspace()
    bad_tenant, good_tenant = await console.tenant(ws), await console.tenant(ws)
    owner = await console.user(ws, "owner")
    bad_pack = await console.pack(ws, bad_tenant)
    good_pack = await console.pack(ws, good_tenant)
    await console.pack_ready(bad_pack, "{not json")
    await console.pack_ready(good_pack, '{"policies": 1}')
    bad_run = await console.run(ws, status="running")
    good_run = await console.run(ws, status="running", summary_counts={"processed": 1, "total": 2})
    # Valid JSON of the wrong shape, and counters that are no numbers.
    await host.pool.execute(
        "UPDATE operation_runs SET summary_counts = '[1, 2]' WHERE id = $1", bad_run
    )
    odd_run = await console.run(ws, status="running", summary_counts={"processed": "lots"})
    caplog.set_level(logging.WARNING, logger="opspush.storage")
    viewer = await attached.connect(owner)
    viewers.append(viewer)
    # One socket, so that the reads are batched together with the good rows.
    for ch in (f"review-pack:{bad_tenant}", f"review-pack:{good_tenant}"):
        await viewer.send({"op": "subscribe", "ch": ch})
    cards = {}
    while len(cards) < 2:
        frame = await viewer.recv()
        if frame["type"] == "state":
            cards[frame["ch"]] = frame["data"]["pack"]
    assert cards[f"review-pack:{bad_tenant}"]["summary"] == {}
    assert cards[f"review-pack:{bad_tenant}"]["status"] == "ready"
    assert cards[f"review-pack:{good_tenant}"]["summary"] == {"policies": 1}
    viewer = await attached.connect(owner)  # the first one closed: its cards are final
    viewers.append(viewer)
    runs = {}
    for run in (bad_run, good_run, odd_run):
        await viewer.send({"op": "subscribe", "ch": f"run:{run}"})
    while len(runs) < 3:
        frame = await viewer.recv()
        if frame["type"] == "state" and frame["ch"].startswith("run:"):
            runs[frame["data"]["id"]] = frame["data"]
    assert runs[bad_run]["summary_counts"] == {} and runs[bad_run]["progress"] is None
    assert runs[odd_run]["summary_counts"] == {}
    assert runs[good_run]["summary_counts"] == {"processed": 1, "total": 2}
    # Running runs are re-read every second: several reads, one warning per row.
    stats = attached.engine.stats
    reads = stats.reads["run"]
    await wait_until(lambda: stats.reads["run"] >= reads + 3, what="three more run reads")
    warnings = [r.getMessage() for r in caplog.records if "malformed JSON" in r.getMessage()]
    assert sorted(warnings) == sorted(
        [
            f"opspush: malformed JSON in review_packs.summary of row {bad_pack}: read as {{}}",
            f"opspush: malformed JSON in operation_runs.summary_counts of row {bad_run}: "
            "read as {}",
        ]
    ), warnings


async def test_start_up_says_in_one_line_how_changes_are_seen(
    host: Host, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="opspush.service")
    async with attached_server(host, notify=False):
        pass
    async with attached_server(host, notify=True):
        pass
    lines = [r.getMessage() for r in caplog.records if r.name == "opspush.service"]
    assert lines == [
        "attach mode: serving from schema opspush without notification triggers: changes are "
        "seen by the tick alone (runs within their interval, access within 1 s)",
        "attach mode: serving from schema opspush; 7 host triggers notify",
    ]


@pytest.fixture
async def notified(host: Host, clock: ManualClock) -> AsyncIterator[RunningServer]:
    """Attach mode with triggers, on a clock that never moves: frames come by NOTIFY only."""
    async with attached_server(host, clock=clock, notify=True) as running:
        assert running.service.listener is not None
        async with asyncio.timeout(10):
            await running.service.listener.connected.wait()
        yield running


async def test_triggers_wake_runs_cards_walls_and_access(
    notified: RunningServer, host: Host, viewers: list[Viewer]
) -> None:
    console = host.console
    ws = await console.workspace()
    tenant = await console.tenant(ws)
    operator = await console.user(ws, "operator", [tenant])
    run = await console.run(ws, tenant, status="running")
    await console.pack(ws, tenant)
    viewer = await notified.connect(operator)
    viewers.append(viewer)
    for ch in (f"run:{run}", f"review-pack:{tenant}", f"operations:{ws}"):
        assert (await viewer.subscribe(ch))["type"] == "state"
    await console.progress(run, {"total": 10, "processed": 5})
    seen = set()
    while len(seen) < 2:  # the run and its wall, woken by one NOTIFY
        frame = await viewer.recv(timeout=5)
        assert frame["type"] == "state"
        seen.add(frame["ch"])
    assert seen == {f"run:{run}", f"operations:{ws}"}
    pack = await console.pack(ws, tenant)
    frame = await viewer.recv(timeout=5)
    assert frame["ch"] == f"review-pack:{tenant}" and frame["data"]["pack"]["id"] == pack
    # Access: the entitlement goes (a statement on tenant_user), the run ends at once.
    await host.pool.execute("DELETE FROM tenant_user WHERE user_id = $1", operator)
    ends = set()
    while len(ends) < 2:
        frame = await viewer.recv(timeout=5)
        if frame["type"] == "end":
            ends.add((frame["ch"], frame["reason"]))
    assert ends == {(f"run:{run}", "revoked"), (f"review-pack:{tenant}", "revoked")}


async def test_the_attach_demo_host_moves_and_is_served(
    postgres_server: dict[str, Any], viewers: list[Viewer]
) -> None:
    """`opspush demo --attach`'s host: seeded, attached, simulated, served as its role."""
    suffix = uuid.uuid4().hex[:8]
    admin_dsn = postgres_server["dsn"]
    name, role = f"opspush_demo_{suffix}", f"opspush_demo_serve_{suffix}"
    demo = await host_demo.prepare(admin_dsn, say=lambda _line: None, database=name, role=role)
    db = await asyncpg.connect(demo.dsn)
    try:
        simulator = host_demo.HostSimulator(db, demo, seed_value=1)
        async with running_server(demo.serving_dsn, attach_schema="opspush") as served:
            viewer = await served.connect(demo.owner_id)
            viewers.append(viewer)
            assert (await viewer.subscribe(f"operations:{demo.workspace_id}"))["type"] == "state"
            while not (await db.fetchval("SELECT count(*) FROM operation_runs")):
                await simulator.step()
            await simulator.step()
            served.engine.wake_all()  # the tick would get there within 10 s
            frame = await viewer.until(lambda f: f["type"] == "state" and f["data"]["runs"])
            assert frame["data"]["workspace_id"] == demo.workspace_id
            for _ in range(120):  # two minutes of the demo, a step a second
                await simulator.step()
            # The run the demo links is still in flight; the finished ones agree with their
            # counters (no "Partially succeeded" with nothing failed).
            linked = await viewer.subscribe(f"run:{demo.run_id}")
            assert linked["type"] == "state" and linked["data"]["status"] == "running", linked
            finished = await db.fetch(
                """SELECT outcome, summary_counts::text AS counts, failure_summary::text AS failures
                   FROM operation_runs WHERE status = 'completed'"""
            )
            assert len(finished) > 5
            for run in finished:
                counts, failures = json.loads(run["counts"]), json.loads(run["failures"])
                assert run["outcome"] == outcome_from_counts(counts), counts
                assert failures == failure_reasons(run["outcome"], counts), (counts, failures)
    finally:
        await db.close()
        admin = await asyncpg.connect(admin_dsn)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'DROP ROLE IF EXISTS "{role}"')
        await admin.close()
