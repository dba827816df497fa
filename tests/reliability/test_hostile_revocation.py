"""A revocation never trails the change it came with (issue 17, item 3).

The host commits, in one transaction, what revokes a viewer's access (a membership,
entitlement or user delete; in attach mode a soft delete) and a new state of the run or card
that viewer watches. Both notifications arrive together: the state read may land before the
access load. The viewer must get `end revoked` and not one frame of the new state, on `/ws`
and on the Pusher endpoint, standalone and attached.

The servers run on a manual clock that stands still: whatever arrives came from the
notifications. The two reads race; to make the state read win every time, the access load is
held back by a lock another session takes on a capability table (its tables are read in the
same statement), and let go only once the state read has landed.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import asyncpg
import pytest

from opspush.core.channels import parse_channel
from opspush.core.clock import ManualClock
from opspush.database import notifications
from tests.attach.conftest import Host, attached_server
from tests.attach.conftest import host as host  # the attach fixture, reused here
from tests.conftest import RunningServer
from tests.factories import Factory
from tests.pusher_support import PusherSocket, channel_auth, pusher_server, signin
from tests.pusher_support import host as pusher_host
from tests.reliability.conftest import wait_until, watch_logs
from tests.reliability.test_hostile_scope import frames_until_closed, leaks

TRIES = 2
ORDERS = (1, -1)  # the revocation written first, or the state first
SECRET = 424242  # in the state written with the revocation: must never reach the viewer
REVOKES = {
    "membership deleted": "DELETE FROM workspace_memberships WHERE user_id = $1",
    "entitlement deleted": "DELETE FROM tenant_entitlements WHERE user_id = $1",
    "user deleted": "DELETE FROM users WHERE id = $1",
}
SECRET_COUNTS = {"total": SECRET, "processed": 1}  # the standalone pool encodes JSON itself
CHANGES = {
    "run": "UPDATE operation_runs SET summary_counts = $2::jsonb WHERE id = $1",
    "review-pack": "UPDATE review_packs SET summary = $2::jsonb WHERE tenant_id = $1",
}


async def listening(server: RunningServer) -> RunningServer:
    assert server.service.listener is not None
    async with asyncio.timeout(10):
        await server.service.listener.connected.wait()
    return server


@pytest.fixture
async def notified(database_dsn: str, clock: ManualClock) -> AsyncIterator[RunningServer]:
    async with pusher_server(database_dsn, clock=clock, notify=True) as server:
        yield await listening(server)


async def one_transaction(pool: asyncpg.Pool, *statements: tuple[str, tuple[Any, ...]]) -> None:
    async with pool.acquire() as connection, connection.transaction():
        for sql, args in statements:
            await connection.execute(sql, *args)


async def settled(server: RunningServer, pool: asyncpg.Pool) -> None:
    """What the setup notified has reached the engine: nothing it wakes can be read later,
    after the transaction under test (the clock stands still, so nothing else reads)."""
    listener = server.service.listener
    assert listener is not None
    marker = f"test-marker-{uuid.uuid4().hex}"  # an unknown payload: ignored by the engine
    seen = asyncio.Event()

    def spot(payload: str) -> bool:
        if payload == marker:
            seen.set()
        return False  # nothing dropped

    listener.drop = spot
    try:
        await pool.execute("SELECT pg_notify($1, $2)", notifications.CHANNEL, marker)
        await asyncio.wait_for(seen.wait(), 10)
        await wait_until(lambda: listener.idle, 10, "the listener handed everything over")
    finally:
        listener.drop = None


async def committed_before_access_loads(
    server: RunningServer,
    pool: asyncpg.Pool,
    ch: str,
    table: str,
    *statements: tuple[str, tuple[Any, ...]],
) -> None:
    """Commit `statements` in one transaction while `table` is locked, so the access load
    it notifies waits; let it go once the state read of `ch` has landed."""
    watch = server.engine.watches[parse_channel(ch)]
    before = watch.read_seq
    async with pool.acquire() as locker, locker.transaction():
        await locker.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
        await one_transaction(pool, *statements)
        await wait_until(lambda: watch.read_seq > before, 10, f"the read of {ch} landed")


async def watched_thing(db: Factory, clock: ManualClock, kind: str) -> tuple[int, int, str]:
    """A readonly user entitled to one tenant, and a run or card of it (read every 10 s)."""
    ws = await db.workspace()
    tenant = await db.tenant(ws)
    user = await db.user(ws, "readonly", tenants=[tenant])
    if kind == "run":
        old = clock.now() - timedelta(minutes=5)
        run = await db.run(ws, tenant, status="running", created_at=old)
        return user, run, f"run:{run}"
    await db.pack(ws, tenant, status="generating")
    return user, tenant, f"review-pack:{tenant}"


async def test_a_state_committed_with_its_revocation_never_reaches_the_viewer(
    notified: RunningServer, clock: ManualClock, db: Factory, record: Any
) -> None:
    server = notified
    tries = 0
    with watch_logs() as logs:
        for revoke, revoke_sql in REVOKES.items():
            for kind, change_sql in CHANGES.items():
                for order in ORDERS * TRIES:
                    user, target, ch = await watched_thing(db, clock, kind)
                    await settled(server, db.pool)
                    viewer = await server.connect(user)
                    assert (await viewer.subscribe(ch))["type"] == "state"
                    statements = [(revoke_sql, (user,)), (change_sql, (target, SECRET_COUNTS))]
                    await committed_before_access_loads(
                        server, db.pool, ch, "role_capabilities", *statements[::order]
                    )
                    frames = await frames_until_closed(viewer)
                    assert frames == [{"type": "end", "ch": ch, "reason": "revoked"}], (
                        revoke,
                        kind,
                        frames,
                    )
                    assert not leaks(frames, SECRET)
                    tries += 1
        logs.assert_clean()
    record(
        "hostile",
        "one transaction revokes a `/ws` viewer's access (membership, entitlement or user "
        "delete) and writes a new state of the run or card it watches; notifications, "
        "clock still",
        tries,
        "exactly `end revoked`, never the state written with the revocation",
    )


async def test_a_state_committed_with_its_revocation_never_reaches_a_pusher_viewer(
    notified: RunningServer, clock: ManualClock, db: Factory, record: Any
) -> None:
    server = notified
    client = pusher_host(server)
    tries = 0
    for kind, change_sql in CHANGES.items():
        for _ in ORDERS * TRIES:
            user, target, ch = await watched_thing(db, clock, kind)
            await settled(server, db.pool)
            name = f"private-opspush.{ch.replace(':', '.')}"
            socket = await PusherSocket.open(server)
            try:
                assert (await signin(client, socket, user))["event"] == "pusher:signin_success"
                auth = channel_auth(client, socket.socket_id, name)
                answer = await socket.subscribe(name, auth)
                assert answer["event"] == "pusher_internal:subscription_succeeded", answer
                await socket.until(lambda f: f["event"] == "opspush.state")
                await committed_before_access_loads(
                    server,
                    db.pool,
                    ch,
                    "role_capabilities",
                    (REVOKES["membership deleted"], (user,)),
                    (change_sql, (target, SECRET_COUNTS)),
                )
                frame = await socket.until(lambda f, name=name: f.get("channel") == name)
                assert frame["event"] == "opspush.end", (kind, frame)
                assert frame["data"] == {"reason": "revoked"}
            finally:
                await socket.close()
            tries += 1
    record(
        "hostile",
        "one transaction deletes a signed-in Pusher viewer's membership and writes a new "
        "state of the run or card it watches; notifications, clock still",
        tries,
        "the next frame on the channel is `opspush.end` `revoked`, never the new state",
    )


async def test_an_attached_soft_delete_committed_with_a_state_never_lets_it_through(
    host: Host, clock: ManualClock, record: Any
) -> None:
    console = host.console
    tries = 0
    async with attached_server(host, clock=clock, notify=True) as server:
        await listening(server)
        for _ in ORDERS * TRIES:
            ws = await console.workspace()
            tenant = await console.tenant(ws)
            user = await console.user(ws, "operator", [tenant])
            run = await console.run(ws, tenant, status="running")
            ch = f"run:{run}"
            await settled(server, host.pool)
            viewer = await server.connect(user)
            assert (await viewer.subscribe(ch))["type"] == "state"
            await committed_before_access_loads(
                server,
                host.pool,
                ch,
                "role_has_permissions",  # read by the capability view's query
                (
                    "UPDATE workspace_user SET deleted_at = now() WHERE user_id = $1",
                    (user,),
                ),
                (
                    "UPDATE operation_runs SET summary_counts = $2::json WHERE id = $1",
                    (run, json.dumps(SECRET_COUNTS)),  # the host's pool has no JSON codec
                ),
            )
            frames = await frames_until_closed(viewer)
            assert frames == [{"type": "end", "ch": ch, "reason": "revoked"}], frames
            tries += 1
    record(
        "hostile",
        "attach mode: one host transaction soft-deletes a viewer's membership and writes "
        "new counts on the run it watches; triggers, clock still",
        tries,
        "exactly `end revoked`, never the counts written with the soft delete",
    )
