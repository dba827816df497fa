"""Never a byte out of scope: the engine-side attacks of the security review (issue 13).

- A watched run or card moves out of a viewer's scope (another tenant, a run type needing a
  capability the viewer lacks, a tenant moved to another workspace), with new data: the
  viewer gets `end revoked` and not one frame of the new state, paused or not, with
  notifications or only the tick; a wall drops the run in the same push.
- A refusal of a watched channel and of a missing one cost the same reads and frames.
- A subscription right after an access change is decided on facts loaded after it.
- A change notified while every viewer is paused is read at once on resume.

The servers run on a manual clock that stands still unless a test moves it: whatever
arrives meanwhile came from a notification, a subscribe or a resume.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import pytest
import websockets

from opspush.core.channels import Channel, Kind
from opspush.core.clock import ManualClock
from opspush.database.storage import AccessSnapshot, Storage
from opspush.engine.engine import Engine
from opspush.engine.stats import EngineStats
from tests.conftest import RunningServer, Viewer, running_server, step
from tests.factories import Factory
from tests.reliability.conftest import wait_until, watch_logs
from tests.test_engine import sync
from tests.test_engine_grants import FakeViewer

SECRET_SUMMARY = [{"code": "tenant2.only", "message": "a failure only tenant 2 may read"}]
RESTRICTED_TYPE = "restricted.export"  # needs a capability readonly users lack


def changes(t2: int, now: datetime) -> dict[str, dict[str, Any]]:
    """What moves the run out of the readonly viewer's scope (each with a new failure summary)."""
    moved = {"tenant_id": t2, "failure_summary": SECRET_SUMMARY}
    return {
        "moved to another tenant": moved,
        "type changed to one needing a capability": {
            "type": RESTRICTED_TYPE,
            "failure_summary": SECRET_SUMMARY,
        },
        "moved to another tenant and finished": {
            **moved,
            "status": "completed",
            "outcome": "failed",
            "completed_at": now,
        },
    }


MODES = ["watching", "paused, another viewer watching", "paused alone, then resumed"]


async def frames_until_closed(viewer: Viewer, timeout: float = 10.0) -> list[dict[str, Any]]:
    """Every frame the server sends until it closes the socket."""
    frames = []
    async with asyncio.timeout(timeout):
        try:
            while True:
                frames.append(json.loads(await viewer.connection.recv()))
        except websockets.ConnectionClosed:
            return frames


def leaks(frames: list[dict[str, Any]], *secrets: object) -> list[dict[str, Any]]:
    text = [(frame, json.dumps(frame)) for frame in frames]
    return [frame for frame, raw in text if any(str(secret) in raw for secret in secrets)]


@pytest.fixture(scope="module")
async def restricted_type(pool: asyncpg.Pool) -> str:
    await pool.execute(
        "INSERT INTO operation_type_capabilities VALUES ($1, 'restricted.view') "
        "ON CONFLICT DO NOTHING",
        RESTRICTED_TYPE,
    )
    return RESTRICTED_TYPE


@pytest.fixture(params=[False, True], ids=["tick", "notify"])
async def scoped(
    request: pytest.FixtureRequest, database_dsn: str, clock: ManualClock, restricted_type: str
) -> AsyncIterator[RunningServer]:
    notify: bool = request.param
    async with running_server(database_dsn, clock=clock, notify=notify) as server:
        if server.service.listener is not None:
            async with asyncio.timeout(10):
                await server.service.listener.connected.wait()
        yield server


async def reach(server: RunningServer, clock: ManualClock, interval: float) -> None:
    """Let the change be read: by its notification, or else by the tick one interval later."""
    if not server.settings.notify:
        await step(server, clock, interval)


async def marked_stale(server: RunningServer, channel: Channel) -> None:
    watch = server.engine.watches[channel]
    await wait_until(lambda: watch.stale, 10, f"{channel.name} marked stale while paused")


async def test_a_run_leaving_the_viewers_scope_is_never_pushed(
    scoped: RunningServer, clock: ManualClock, db: Factory, record: Any
) -> None:
    server = scoped
    results: dict[tuple[str, str], list[dict[str, Any]]] = {}
    with watch_logs() as logs:
        for change_name in changes(0, clock.now()):
            for mode in MODES:
                ws = await db.workspace()
                t1, t2 = await db.tenant(ws), await db.tenant(ws)
                reader_id = await db.user(ws, "readonly", tenants=[t1])
                owner_id = await db.user(ws, "owner")
                old = clock.now() - timedelta(minutes=5)  # read every 10 s
                run = await db.run(ws, t1, status="running", created_at=old)
                ch = f"run:{run}"
                reader = await server.connect(reader_id)
                first = await reader.subscribe(ch)
                assert first["data"]["tenant_id"] == t1
                other = None
                if mode == "paused, another viewer watching":
                    other = await server.connect(owner_id)
                    await other.subscribe(ch)
                if mode != "watching":
                    await reader.send({"op": "pause", "ch": ch, "reason": "hidden"})
                    await sync(reader)
                await db.update_run(run, **changes(t2, clock.now())[change_name])
                await reach(server, clock, 10.0)
                if mode == "paused alone, then resumed":
                    if server.settings.notify:  # the notification is seen first
                        await marked_stale(server, Channel(Kind.RUN, run))
                    await reader.send({"op": "resume", "ch": ch})
                frames = await frames_until_closed(reader)
                results[(change_name, mode)] = frames
                assert frames == [{"type": "end", "ch": ch, "reason": "revoked"}], (
                    change_name,
                    mode,
                    frames,
                )
                assert not leaks(frames, "tenant2.only", f'"tenant_id": {t2}', RESTRICTED_TYPE)
                if other is not None:  # the new state was read, and went to who may see it
                    moved = await other.until(lambda f: f["type"] == "state")
                    assert moved["data"]["failure_summary"][0]["code"] == "tenant2.only"
                    await other.close()
        logs.assert_clean()
    how = "notifications" if server.settings.notify else "the tick only"
    record(
        "hostile",
        f"a watched run moves out of a readonly viewer's scope with a new failure summary "
        f"(another tenant; a type needing a capability it lacks; another tenant and "
        f"finished), the viewer watching, paused, or paused alone then resuming; {how}",
        len(results),
        "the viewer's frames after the change: exactly `end revoked`, never a state of the "
        "new scope; a viewer in scope got the new state",
    )


async def test_a_run_leaving_a_users_scope_leaves_their_wall_in_the_same_push(
    scoped: RunningServer, clock: ManualClock, db: Factory, viewers: list[Viewer], record: Any
) -> None:
    server = scoped
    ws = await db.workspace()
    t1, t2 = await db.tenant(ws), await db.tenant(ws)
    reader = await server.connect(await db.user(ws, "readonly", tenants=[t1]))
    owner = await server.connect(await db.user(ws, "owner"))
    viewers += [reader, owner]
    ch = f"operations:{ws}"
    await reader.subscribe(ch)
    await owner.subscribe(ch)
    run = await db.run(ws, t1, status="running", created_at=clock.now() - timedelta(minutes=5))
    await reach(server, clock, 10.0)
    assert [r["id"] for r in (await reader.recv())["data"]["runs"]] == [run]
    assert [r["id"] for r in (await owner.recv())["data"]["runs"]] == [run]
    reads = server.service.stats.reads[Kind.WALL]
    await db.update_run(run, tenant_id=t2, failure_summary=SECRET_SUMMARY)
    await reach(server, clock, 10.0)
    seen_by_owner = await owner.recv()
    assert seen_by_owner["data"]["runs"][0]["tenant_id"] == t2
    seen_by_reader = await reader.recv()
    assert seen_by_reader["data"]["runs"] == []
    # One read brought both: the run left the reader's wall in the push that moved it.
    assert server.service.stats.reads[Kind.WALL] == reads + 1
    await sync(reader)  # nothing else arrived for the reader
    how = "notifications" if server.settings.notify else "the tick only"
    record(
        "hostile",
        f"a run on a wall moves to a tenant the viewer is not entitled to; {how}",
        1,
        "the same read's push drops it from that viewer's wall; the owner's shows it moved",
    )


async def test_a_tenant_moved_to_another_workspace_ends_its_card(
    database_dsn: str, clock: ManualClock, db: Factory, viewers: list[Viewer], record: Any
) -> None:
    """No notification fires for a tenant's update: the tick finds the move."""
    async with running_server(database_dsn, clock=clock) as server:
        ws, elsewhere = await db.workspace(), await db.workspace()
        tenant = await db.tenant(ws)
        reader = await server.connect(await db.user(ws, "readonly", tenants=[tenant]))
        viewers.append(reader)
        await db.pack(ws, tenant, status="generating")
        ch = f"review-pack:{tenant}"
        assert (await reader.subscribe(ch))["interval"] == 10
        await db.execute("UPDATE tenants SET workspace_id = $1 WHERE id = $2", elsewhere, tenant)
        secret = await db.pack(elsewhere, tenant, status="queued", summary={"secret": "ws2"})
        await step(server, clock, 10.0)
        frames = await frames_until_closed(reader)
        assert frames == [{"type": "end", "ch": ch, "reason": "revoked"}]
        assert not leaks(frames, '"secret"', f'"id": {secret}')
    record(
        "hostile",
        "a watched tenant moves to another workspace and gets a new review pack",
        1,
        "the card's viewer gets exactly `end revoked`, never the new pack",
    )


async def test_a_refusal_costs_the_same_whether_or_not_someone_watches(
    database_dsn: str, clock: ManualClock, db: Factory, viewers: list[Viewer], record: Any
) -> None:
    """A watched out-of-scope run and a missing one: the same frames, the same counters."""
    async with running_server(database_dsn, clock=clock, recheck_interval=5.0) as server:
        stats = server.service.stats
        ws = await db.workspace()
        owner = await server.connect(await db.user(ws, "owner"))
        viewers.append(owner)
        run = await db.run(ws, status="running", created_at=clock.now() - timedelta(minutes=5))
        await owner.subscribe(f"run:{run}")  # live: due again in 10 s
        missing = run + 1_000_000
        outsider_ws = await db.workspace()

        async def probe(ch: str) -> tuple[dict[str, Any], dict[str, Any]]:
            outsider = await server.connect(await db.user(outsider_ws, "owner"))
            viewers.append(outsider)
            if stale_facts:
                clock.advance(2.0)  # its facts, loaded by the handshake, are 2 s old
            before = counters(stats)
            answer = await outsider.subscribe(ch)
            assert answer["type"] == "error" and answer["code"] == "not_found", answer
            await outsider.close()
            return {**answer, "ch": None}, delta(before, counters(stats))

        for stale_facts in (False, True):
            watched = await probe(f"run:{run}")
            absent = await probe(f"run:{missing}")
            assert watched == absent, (stale_facts, watched, absent)
            reads = {"reads.run": 1, "channel_reads.run": 1, "errors.not_found": 1}
            # Stale facts (2 s old) are loaded again for the new subscription: one load more.
            assert watched[1] == ({**reads, "access_loads": 1} if stale_facts else reads)
        await sync(owner)  # the owner's run did not change: nothing was pushed to them
    record(
        "hostile",
        "a subscribe to a run someone else watches, from outside its workspace, against one "
        "to a missing run (with facts fresh and 2 s old)",
        4,
        "identical `not_found` frames after the same reads: engine counters (as in "
        "`/metrics`) moved identically",
    )


def counters(stats: EngineStats) -> dict[str, int]:
    found = {"access_loads": stats.access_loads, "read_errors": stats.read_errors}
    for name in ("reads", "channel_reads", "states_pushed", "ends", "errors"):
        for key, value in getattr(stats, name).items():
            found[f"{name}.{key}"] = value
    return found


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    keys = before.keys() | after.keys()
    moved = {key: after.get(key, 0) - before.get(key, 0) for key in keys}
    return {key: value for key, value in moved.items() if value}


class GatedStorage(Storage):
    """The real reads; an access load can be held in flight after its query ran."""

    gate: asyncio.Event | None = None
    queried: asyncio.Event | None = None

    async def read_access(self, user_ids: Any) -> AccessSnapshot:
        snapshot = await super().read_access(user_ids)
        if self.gate is not None and self.queried is not None:
            self.queried.set()
            await self.gate.wait()
        return snapshot


@pytest.fixture
async def gated(pool: asyncpg.Pool) -> AsyncIterator[Engine]:
    engine = Engine(GatedStorage(pool), clock=ManualClock(), recheck_interval=5.0)
    try:
        yield engine
    finally:
        await engine.stop()


async def settle(engine: Engine, until: Callable[[], bool]) -> None:
    async with asyncio.timeout(10):
        while not until():
            await engine.tick()


async def test_a_subscription_after_an_access_change_is_decided_on_newer_facts(
    gated: Engine, db: Factory, record: Any
) -> None:
    engine, storage = gated, gated.storage
    assert isinstance(storage, GatedStorage) and isinstance(engine.clock, ManualClock)
    ws = await db.workspace()
    user = await db.user(ws, "readonly")
    first, second = await db.run(ws, status="running"), await db.run(ws, status="running")

    # 1. A facts load is in flight when the membership is deleted and notified: what it
    #    brings is from before the change, and decides no new subscription.
    early = FakeViewer(user)
    engine.subscribe(early, Channel(Kind.RUN, first))
    storage.gate, storage.queried = asyncio.Event(), asyncio.Event()
    jobs = asyncio.ensure_future(engine.tick())
    await asyncio.wait_for(storage.queried.wait(), 10)  # read as of before the delete
    await db.execute("DELETE FROM workspace_memberships WHERE user_id = $1", user)
    engine.recheck_now()  # what the listener does on the notification
    late = FakeViewer(user)
    engine.subscribe(late, Channel(Kind.RUN, second))
    storage.gate.set()
    await jobs
    storage.gate = storage.queried = None
    await settle(engine, lambda: bool(late.closed))
    await settle(engine, lambda: bool(early.closed))
    for viewer, run in ((early, first), (late, second)):  # neither was decided on old facts
        assert viewer.frames() == [
            {"type": "error", "ch": f"run:{run}", "code": "not_found", "message": "no such channel"}
        ]

    # 2. No notification: facts 2 s old are loaded again for a new subscription.
    other = await db.user(ws, "readonly")
    watching = FakeViewer(other)
    engine.subscribe(watching, Channel(Kind.RUN, first))
    await settle(engine, lambda: bool(watching.frames()))
    await db.execute("DELETE FROM workspace_memberships WHERE user_id = $1", other)
    loads = engine.stats.access_loads
    engine.clock.advance(0.5)
    soon = FakeViewer(other)
    engine.subscribe(soon, Channel(Kind.RUN, first))  # facts 0.5 s old: decided at once
    assert engine.stats.access_loads == loads and soon.frames()[0]["type"] == "state"
    engine.clock.advance(1.5)
    later = FakeViewer(other)
    engine.subscribe(later, Channel(Kind.WALL, ws))  # facts 2 s old: loaded again
    await settle(engine, lambda: bool(later.closed))
    assert engine.stats.access_loads == loads + 1
    assert later.frames()[0]["code"] == "not_found"
    record(
        "hostile",
        "a subscription right after its user's membership is deleted: a facts load in flight "
        "when the notification arrives; facts 2 s old without a notification",
        2,
        "`not_found` both times: decided on facts loaded after the notification, at most "
        "1 s before the subscription",
    )


async def test_a_change_notified_while_paused_is_read_on_resume(
    database_dsn: str, clock: ManualClock, db: Factory, viewers: list[Viewer], record: Any
) -> None:
    async with running_server(database_dsn, clock=clock, notify=True) as server:
        assert server.service.listener is not None
        await asyncio.wait_for(server.service.listener.connected.wait(), 10)
        ws = await db.workspace()
        viewer = await server.connect(await db.user(ws, "owner"))
        viewers.append(viewer)
        run = await db.run(ws, status="running", created_at=clock.now() - timedelta(minutes=5))
        ch = f"run:{run}"
        await viewer.subscribe(ch)
        await viewer.send({"op": "pause", "ch": ch, "reason": "modal"})
        await sync(viewer)
        reads = server.service.stats.channel_reads[Kind.RUN]
        await db.update_run(run, summary_counts={"total": 4, "processed": 3})
        await marked_stale(server, Channel(Kind.RUN, run))
        assert server.service.stats.channel_reads[Kind.RUN] == reads  # no read while paused
        await viewer.send({"op": "resume", "ch": ch})
        frame = await viewer.recv()  # the clock stands still: only the resume's read brings it
        assert frame["data"]["progress"] == 0.75
        assert server.service.stats.channel_reads[Kind.RUN] == reads + 1
    record(
        "hostile",
        "a change notified while the run's only viewer is paused, then resume (clock still)",
        1,
        "the resume reads at once and brings the change; no read while paused",
    )
