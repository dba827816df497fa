"""Subscriptions granted by the host: existence and terminal state from reads, access not ours.

The engine is driven directly (a manual clock, a real PostgreSQL); the viewers are plain
objects with an outbox, as the WebSocket and Pusher sessions are to the engine.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from opspush.core.channels import Channel, Kind
from opspush.core.clock import ManualClock
from opspush.database.storage import Storage
from opspush.engine.engine import Engine
from opspush.engine.outbox import Outbox
from tests.factories import Factory


class FakeViewer:
    def __init__(self, user_id: int | None) -> None:
        self.user_id = user_id
        self.outbox = Outbox(control_limit=100)
        self.closed: list[tuple[str, bool]] = []

    def subscription_closed(self, ch: str, *, ended: bool) -> None:
        self.closed.append((ch, ended))

    def frames(self) -> list[dict[str, Any]]:
        taken = []
        while (item := self.outbox.pop()) is not None:
            assert isinstance(item, str)
            taken.append(json.loads(item))
        return taken


@pytest.fixture
async def engine(pool: asyncpg.Pool) -> AsyncIterator[Engine]:
    engine = Engine(Storage(pool), clock=ManualClock(), recheck_interval=0.5)
    try:
        yield engine
    finally:
        await engine.stop()


async def test_granted_run_needs_no_membership_and_ends_terminal(
    engine: Engine, db: Factory
) -> None:
    ws = await db.workspace()
    tenant = await db.tenant(ws)
    stranger = await db.user(await db.workspace(), "readonly")  # no member of `ws`
    run = await db.run(ws, tenant_id=tenant, status="running")
    granted, decided = FakeViewer(stranger), FakeViewer(stranger)
    engine.subscribe(granted, Channel(Kind.RUN, run), granted=True)
    engine.subscribe(decided, Channel(Kind.RUN, run))
    await engine.tick()
    await engine.tick()  # the access load may land after the read
    assert [f["type"] for f in granted.frames()] == ["state"]
    assert decided.frames()[0]["code"] == "not_found"  # the same user, decided by the tables

    await db.update_run(run, status="completed", outcome="succeeded")
    engine.wake_channels([Channel(Kind.RUN, run)])
    await engine.tick()
    frames = granted.frames()
    assert [(f["type"], f.get("reason")) for f in frames] == [("state", None), ("end", "terminal")]
    assert frames[0]["data"]["status"] == "succeeded" and frames[0]["interval"] is None
    assert granted.closed == [(f"run:{run}", True)]
    assert not engine.watches


async def test_viewer_without_user_granted_card_and_missing_run(
    engine: Engine, db: Factory
) -> None:
    ws = await db.workspace()
    tenant = await db.tenant(ws)
    anonymous = FakeViewer(None)
    engine.subscribe(anonymous, Channel(Kind.REVIEW_PACK, tenant), granted=True)
    engine.subscribe(anonymous, Channel(Kind.RUN, 2**62), granted=True)
    await engine.tick()
    frames = anonymous.frames()
    card = [(f["type"], f.get("reason")) for f in frames if f["ch"] == f"review-pack:{tenant}"]
    assert card == [("state", None), ("end", "terminal")]  # no pack yet: final at once
    assert [f for f in frames if f["ch"] == f"run:{2**62}"] == [
        {
            "type": "error",
            "ch": f"run:{2**62}",
            "code": "not_found",
            "message": "no such channel",
        }
    ]
    assert engine.stats.access_loads == 0  # nobody's facts were needed


async def test_granted_subscription_survives_rechecks_until_the_run_is_deleted(
    engine: Engine, db: Factory
) -> None:
    ws = await db.workspace()
    run = await db.run(ws, status="running")
    viewer = FakeViewer(None)
    engine.subscribe(viewer, Channel(Kind.RUN, run), granted=True)
    await engine.tick()
    assert [f["type"] for f in viewer.frames()] == ["state"]
    assert isinstance(engine.clock, ManualClock)
    for _ in range(3):  # several access re-checks: nothing to revoke
        engine.clock.advance(1.0)
        await engine.tick()
    assert viewer.frames() == [] and engine.stats.access_loads == 0
    await db.execute("DELETE FROM operation_runs WHERE id = $1", run)
    engine.wake_channels([Channel(Kind.RUN, run)])
    await engine.tick()
    assert [(f["type"], f.get("reason")) for f in viewer.frames()] == [("end", "gone")]


def test_walls_cannot_be_granted_and_userless_viewers_need_grants(engine: Engine) -> None:
    with pytest.raises(ValueError, match="wall"):
        engine.subscribe(FakeViewer(1), Channel(Kind.WALL, 1), granted=True)
    with pytest.raises(ValueError, match="without a user"):
        engine.subscribe(FakeViewer(None), Channel(Kind.RUN, 1))
    assert not engine.watches
