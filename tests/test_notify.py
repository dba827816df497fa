"""LISTEN/NOTIFY wake-ups, with the tick as the safety net.

These servers run on a manual clock that the tests do not move unless they say so: a
state that arrives anyway can only have come through a notification.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest

from opspush.core.channels import Channel, Kind
from opspush.core.clock import ManualClock
from opspush.database import notifications
from tests.conftest import RunningServer, Viewer, running_server
from tests.factories import Factory


@pytest.mark.parametrize(
    ("payloads", "channels", "access"),
    [
        (["r:42:3"], {Channel(Kind.RUN, 42), Channel(Kind.WALL, 3)}, False),
        (["p:5"], {Channel(Kind.REVIEW_PACK, 5)}, False),
        (["t:5"], {Channel(Kind.REVIEW_PACK, 5)}, False),
        (["w:3"], {Channel(Kind.WALL, 3)}, False),
        (["a"], set(), True),
        (["r:1:1", "r:1:1", "r:2:1"], {Channel(Kind.RUN, 1), Channel(Kind.RUN, 2),
                                      Channel(Kind.WALL, 1)}, False),
        (["r:x:1", "r:1", "p:", "p:-1", "zzz", "", "r:0:1"], set(), False),
    ],
)  # fmt: skip
def test_payloads(payloads: list[str], channels: set[Channel], access: bool) -> None:
    wakeup = notifications.parse(payloads)
    assert (wakeup.channels, wakeup.access) == (channels, access)


def test_a_deleted_tenant_or_workspace_names_its_scope() -> None:
    """The engine finds the runs in it (only it knows which runs those are)."""
    wakeup = notifications.parse(["t:5", "w:3", "t:x", "p:6"])
    assert (wakeup.tenants, wakeup.workspaces) == ({5}, {3})
    assert notifications.parse(["w:3"]) and not notifications.parse(["zzz"])


@pytest.fixture
async def notified(database_dsn: str, clock: ManualClock) -> AsyncIterator[RunningServer]:
    async with running_server(database_dsn, clock=clock, notify=True) as running:
        assert running.service.listener is not None
        async with asyncio.timeout(10):
            await running.service.listener.connected.wait()
        yield running


async def test_a_change_arrives_without_waiting_for_the_interval(
    notified: RunningServer, clock: ManualClock, db: Factory, viewers: list[Viewer]
) -> None:
    ws = await db.workspace()
    user = await db.user(ws, "owner")
    run = await db.run(ws, status="running", created_at=clock.now() - timedelta(minutes=5))
    viewer = await notified.connect(user)
    viewers.append(viewer)
    assert (await viewer.subscribe(f"run:{run}"))["interval"] == 10
    for processed in (1, 2, 3):
        await db.update_run(run, summary_counts={"total": 3, "processed": processed})
        frame = await viewer.recv(timeout=5)  # the clock stands still: no tick is due
        assert frame["data"]["summary_counts"]["processed"] == processed


async def test_new_run_wakes_the_wall_and_new_pack_wakes_the_card(
    notified: RunningServer, clock: ManualClock, db: Factory, viewers: list[Viewer]
) -> None:
    ws = await db.workspace()
    tenant = await db.tenant(ws)
    user = await db.user(ws, "owner")
    await db.pack(ws, tenant, status="generating")
    viewer = await notified.connect(user)
    viewers.append(viewer)
    assert (await viewer.subscribe(f"operations:{ws}"))["data"]["runs"] == []
    assert (await viewer.subscribe(f"review-pack:{tenant}"))["interval"] == 10
    run = await db.run(ws, tenant, status="queued")
    wall = await viewer.recv(timeout=5)
    assert [r["id"] for r in wall["data"]["runs"]] == [run]
    pack = await db.pack(ws, tenant, status="queued")  # the newest pack is the card's
    card = await viewer.recv(timeout=5)
    assert card["data"]["pack"]["id"] == pack


async def test_access_change_rechecks_at_once(
    notified: RunningServer, clock: ManualClock, db: Factory, viewers: list[Viewer]
) -> None:
    ws = await db.workspace()
    user = await db.user(ws, "readonly")
    viewer = await notified.connect(user)
    viewers.append(viewer)
    await viewer.subscribe(f"operations:{ws}")
    await db.execute("DELETE FROM workspace_memberships WHERE user_id = $1", user)
    assert await viewer.recv(timeout=5) == {
        "type": "end",
        "ch": f"operations:{ws}",
        "reason": "revoked",
    }


async def test_dropped_notifications_cost_at_most_one_interval(
    notified: RunningServer, clock: ManualClock, db: Factory, viewers: list[Viewer]
) -> None:
    listener = notified.service.listener
    assert listener is not None
    dropped: list[str] = []
    seen_update = asyncio.Event()

    def drop(payload: str) -> bool:
        dropped.append(payload)
        if len([p for p in dropped if p.startswith("r:")]) >= 2:  # the insert, the update
            seen_update.set()
        return True

    listener.drop = drop  # every notification of this test is lost
    try:
        ws = await db.workspace()
        user = await db.user(ws, "owner")
        run = await db.run(ws, status="running", created_at=clock.now() - timedelta(minutes=5))
        viewer = await notified.connect(user)
        viewers.append(viewer)
        await viewer.subscribe(f"run:{run}")
        await db.update_run(run, status="completed", outcome="succeeded")
        async with asyncio.timeout(5):
            await seen_update.wait()
        clock.advance(10.0)  # one interval later the tick re-reads the persisted state
        await notified.engine.tick()
        final = await viewer.recv()
        assert final["data"]["status"] == "succeeded" and final["interval"] is None
        assert (await viewer.recv())["reason"] == "terminal"
    finally:
        listener.drop = None


async def test_listener_reconnects_and_rereads_every_live_channel(
    notified: RunningServer, clock: ManualClock, db: Factory, viewers: list[Viewer]
) -> None:
    listener = notified.service.listener
    assert listener is not None and listener.server_pid is not None
    connects = listener.connects
    listener.drop = lambda payload: True  # as if every notification were lost
    try:
        ws = await db.workspace()
        user = await db.user(ws, "owner")
        run = await db.run(ws, status="running", created_at=clock.now() - timedelta(minutes=5))
        viewer = await notified.connect(user)
        viewers.append(viewer)
        await viewer.subscribe(f"run:{run}")
        await db.execute("SELECT pg_terminate_backend($1)", listener.server_pid)
        await db.update_run(run, status="completed", outcome="blocked")
        # Neither a notification nor a tick (the clock stands still) can bring this:
        # only the re-read of every live channel after the listener's reconnect.
        final = await viewer.recv(timeout=15)
        assert final["data"]["status"] == "blocked"
        assert listener.connects > connects
    finally:
        listener.drop = None


async def test_a_deleted_tenant_ends_its_runs_gone_standalone(
    notified: RunningServer, db: Factory, viewers: list[Viewer]
) -> None:
    """Standalone, deleting a tenant deletes its runs (ON DELETE CASCADE): `gone` at once."""
    ws = await db.workspace()
    tenant = await db.tenant(ws)
    viewer = await notified.connect(await db.user(ws, "owner"))
    viewers.append(viewer)
    run = await db.run(ws, tenant, status="running")
    assert (await viewer.subscribe(f"run:{run}"))["type"] == "state"
    await db.execute("DELETE FROM tenants WHERE id = $1", tenant)
    assert await viewer.recv(timeout=5) == {"type": "end", "ch": f"run:{run}", "reason": "gone"}
