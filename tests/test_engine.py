"""The engine's schedule, driven by a manual clock: intervals, batching, pausing, sharing.

The server is real (uvicorn, PostgreSQL, WebSocket clients); only time is in the test's
hands, so crossing the 10 s and 60 s boundaries takes no waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
from datetime import timedelta

import pytest

from opspush.core.channels import Channel, Kind
from opspush.core.clock import ManualClock
from tests.conftest import RunningServer, Viewer, running_server, step
from tests.factories import Factory


def masked_text_frame(payload: bytes) -> bytes:
    """A client text frame, masked as RFC 6455 requires."""
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    if len(payload) > 125:
        header = bytes([0x81, 0x80 | 126]) + len(payload).to_bytes(2, "big")
    else:
        header = bytes([0x81, 0x80 | len(payload)])
    return header + mask + body


async def raw_viewer(
    server: RunningServer, user_id: int, frames: list[dict[str, str]]
) -> socket.socket:
    """A hand-made WebSocket client with a tiny receive window, which then never reads."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, ("127.0.0.1", server.port))
    await loop.sock_sendall(
        sock,
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    # RFC 6455: a client sends frames only once the server's 101 has arrived.
    assert b" 101 " in await loop.sock_recv(sock, 4096)
    for frame in [{"op": "hello", "token": server.token(user_id)}, *frames]:
        await loop.sock_sendall(sock, masked_text_frame(json.dumps(frame).encode()))
    return sock


async def heavy_wall(db: Factory, workspace_id: int, message_size: int) -> None:
    """400 running runs whose failure messages make every wall state large."""
    await db.execute(
        """INSERT INTO operation_runs (workspace_id, type, status, summary_counts, failure_summary)
           SELECT $1, 'bulk.' || g, 'running', '{"total": 100, "processed": 1}',
                  jsonb_build_array(jsonb_build_object('code', 'x', 'message', repeat('m', $2)))
           FROM generate_series(1, 400) g""",
        workspace_id,
        message_size,
    )


async def sync(viewer: Viewer) -> None:
    """Wait until the server has handled every frame sent so far (frames are handled in order)."""
    await viewer.send({"op": "sync"})
    frame = await viewer.until(lambda f: f["type"] == "error" and f["code"] == "bad_request")
    assert frame["message"] == "unknown `op`"


async def test_old_run_every_10s_new_run_every_1s_read_together_when_both_due(
    manual: RunningServer, clock: ManualClock, db: Factory, viewers: list[Viewer]
) -> None:
    ws = await db.workspace()
    user = await db.user(ws, "owner")
    old = await db.run(ws, status="running", created_at=clock.now() - timedelta(minutes=5))
    new = await db.run(ws, status="running", created_at=clock.now())
    viewer = await manual.connect(user)
    viewers.append(viewer)
    assert (await viewer.subscribe(f"run:{old}"))["interval"] == 10
    assert (await viewer.subscribe(f"run:{new}"))["interval"] == 1

    stats = manual.service.stats
    engine = manual.engine
    # Align on the grid where both are next due together, 10 s after the old run's read.
    reads_before, channels_before = stats.reads[Kind.RUN], stats.channel_reads[Kind.RUN]
    old_due = engine.watches[Channel(Kind.RUN, old)].next_due
    new_due = engine.watches[Channel(Kind.RUN, new)].next_due
    assert old_due is not None and new_due is not None
    assert old_due - new_due == pytest.approx(9.0)

    batches = []
    for _ in range(9):
        before = stats.channel_reads[Kind.RUN]
        await step(manual, clock, 1.0)
        batches.append(stats.channel_reads[Kind.RUN] - before)
    assert batches == [1] * 9  # only the new run, once a second
    before_reads, before_channels = stats.reads[Kind.RUN], stats.channel_reads[Kind.RUN]
    await step(manual, clock, 1.0)
    # Both due in the same tick: one statement for two channels.
    assert stats.reads[Kind.RUN] - before_reads == 1
    assert stats.channel_reads[Kind.RUN] - before_channels == 2
    assert stats.reads[Kind.RUN] - reads_before == 10
    assert stats.channel_reads[Kind.RUN] - channels_before == 11
    # Nothing changed in the rows, so nothing was pushed.
    assert stats.states_pushed[Kind.RUN] == 2


async def test_interval_follows_age_across_10s_and_60s(
    manual: RunningServer, clock: ManualClock, db: Factory, viewers: list[Viewer]
) -> None:
    ws = await db.workspace()
    user = await db.user(ws, "owner")
    run = await db.run(ws, status="running", created_at=clock.now())
    viewer = await manual.connect(user)
    viewers.append(viewer)
    assert (await viewer.subscribe(f"run:{run}"))["interval"] == 1
    watch = manual.engine.watches[Channel(Kind.RUN, run)]
    seen = []
    for _ in range(70):
        await step(manual, clock, 1.0)
        seen.append(watch.interval)
    # Ages 1..9 s read every second; from 10 s every 5 s; from 60 s every 10 s.
    assert seen[:9] == [1] * 9
    assert 5 in seen and seen[-1] == 10
    assert seen.index(10) > seen.index(5)
    # The interval travels in the next state frame that carries a change.
    await db.update_run(run, summary_counts={"total": 4, "processed": 1})
    await step(manual, clock, 10.0)
    frame = await viewer.recv()
    assert frame["interval"] == 10 and frame["data"]["progress"] == 0.25


async def test_fifty_viewers_one_read_per_due_tick(
    manual: RunningServer, clock: ManualClock, db: Factory, viewers: list[Viewer]
) -> None:
    ws = await db.workspace()
    # Five users with ten sockets each: within the default per-user limit (20).
    users = [await db.user(ws, "owner") for _ in range(5)]
    run = await db.run(ws, status="running", created_at=clock.now())
    for index in range(50):
        viewer = await manual.connect(users[index % len(users)])
        viewers.append(viewer)
        assert (await viewer.subscribe(f"run:{run}"))["data"]["id"] == run
    stats = manual.service.stats
    # The first viewer's subscription read the run; the 49 others were served from memory.
    assert stats.channel_reads[Kind.RUN] == 1
    for processed in (1, 2, 3):
        await db.update_run(run, summary_counts={"total": 3, "processed": processed})
        await step(manual, clock, 1.0)
        for viewer in viewers:
            assert (await viewer.recv())["data"]["summary_counts"]["processed"] == processed
    assert stats.reads[Kind.RUN] == 4  # one per due tick, not one per viewer
    assert stats.states_pushed[Kind.RUN] == 50 * 4


async def test_pause_stops_reads_and_resume_brings_the_current_state(
    manual: RunningServer, clock: ManualClock, db: Factory, viewers: list[Viewer]
) -> None:
    ws = await db.workspace()
    user = await db.user(ws, "owner")
    run = await db.run(ws, status="running", created_at=clock.now())
    viewer = await manual.connect(user)
    viewers.append(viewer)
    await viewer.subscribe(f"run:{run}")
    await viewer.send({"op": "pause", "reason": "hidden"})
    await sync(viewer)
    stats = manual.service.stats
    reads = stats.channel_reads[Kind.RUN]
    for _ in range(15):
        await step(manual, clock, 1.0)
    assert stats.channel_reads[Kind.RUN] == reads  # no reads on a paused viewer's behalf
    await db.update_run(run, summary_counts={"total": 10, "processed": 7})
    await viewer.send({"op": "resume"})
    frame = await viewer.recv()
    assert frame["data"]["progress"] == 0.7
    assert stats.channel_reads[Kind.RUN] == reads + 1


async def test_a_paused_viewer_of_a_shared_channel_gets_the_latest_state_on_resume(
    manual: RunningServer, clock: ManualClock, db: Factory, viewers: list[Viewer]
) -> None:
    ws = await db.workspace()
    user = await db.user(ws, "owner")
    run = await db.run(ws, status="running", created_at=clock.now())
    watching, hidden = await manual.connect(user), await manual.connect(user)
    viewers += [watching, hidden]
    await watching.subscribe(f"run:{run}")
    await hidden.subscribe(f"run:{run}")
    await hidden.send({"op": "pause", "ch": f"run:{run}", "reason": "modal"})
    await sync(hidden)
    for processed in (1, 2, 3):
        await db.update_run(run, summary_counts={"total": 3, "processed": processed})
        await step(manual, clock, 1.0)
        assert (await watching.recv())["data"]["summary_counts"]["processed"] == processed
    await hidden.send({"op": "resume", "ch": f"run:{run}"})
    frame = await hidden.recv()  # served from memory: the channel is live
    assert frame["data"]["summary_counts"]["processed"] == 3


async def test_review_pack_card_follows_the_latest_pack_to_ready(
    manual: RunningServer, clock: ManualClock, db: Factory, viewers: list[Viewer]
) -> None:
    ws = await db.workspace()
    tenant = await db.tenant(ws)
    user = await db.user(ws, "readonly", tenants=[tenant])
    viewer = await manual.connect(user)
    viewers.append(viewer)
    await db.pack(ws, tenant, status="ready")  # an older pack: not the latest one below
    pack = await db.pack(ws, tenant, status="queued")
    first = await viewer.subscribe(f"review-pack:{tenant}")
    assert first["data"]["pack"]["status"] == "queued" and first["interval"] == 10
    await db.update_pack(pack, status="generating")
    await step(manual, clock, 10.0)
    assert (await viewer.recv())["data"]["pack"]["status"] == "generating"
    await db.update_pack(
        pack, status="ready", file_size=1234, sha256="ab" * 32, generated_at=clock.now()
    )
    await step(manual, clock, 10.0)
    final = await viewer.recv()
    assert final["data"]["pack"] == {
        **final["data"]["pack"],
        "id": pack,
        "status": "ready",
        "file_size": 1234,
    }
    assert final["interval"] is None
    assert await viewer.recv() == {
        "type": "end",
        "ch": f"review-pack:{tenant}",
        "reason": "terminal",
    }
    assert await viewer.closed() == 4000


async def test_review_pack_card_without_a_pack_is_final_at_once(
    manual: RunningServer, db: Factory, viewers: list[Viewer]
) -> None:
    ws = await db.workspace()
    tenant = await db.tenant(ws, "Contoso")
    user = await db.user(ws, "owner")
    viewer = await manual.connect(user)
    viewers.append(viewer)
    state = await viewer.subscribe(f"review-pack:{tenant}")
    assert state["data"] == {"tenant_id": tenant, "tenant_name": "Contoso", "pack": None}
    assert state["interval"] is None
    assert (await viewer.recv())["type"] == "end"


async def test_wall_shows_new_runs_and_completions_filtered_per_user(
    manual: RunningServer, clock: ManualClock, db: Factory, viewers: list[Viewer]
) -> None:
    ws = await db.workspace()
    mine, theirs = await db.tenant(ws), await db.tenant(ws)
    owner = await db.user(ws, "owner")
    operator = await db.user(ws, "operator", tenants=[mine])
    old = await db.run(ws, theirs, status="completed", outcome="succeeded")
    await db.update_run(old, completed_at=clock.now() - timedelta(minutes=20))  # too old
    boss, op = await manual.connect(owner), await manual.connect(operator)
    viewers += [boss, op]
    assert (await boss.subscribe(f"operations:{ws}"))["data"] == {"workspace_id": ws, "runs": []}
    assert (await op.subscribe(f"operations:{ws}"))["interval"] == 10

    visible = await db.run(ws, mine, status="running", created_at=clock.now())
    hidden = await db.run(ws, theirs, status="queued", created_at=clock.now())
    await step(manual, clock, 10.0)
    boss_state, op_state = await boss.recv(), await op.recv()
    assert {r["id"] for r in boss_state["data"]["runs"]} == {visible, hidden}
    assert [r["id"] for r in op_state["data"]["runs"]] == [visible]
    assert boss_state["interval"] == 5  # the shortest interval of its active runs (age 10 s)

    await db.update_run(visible, status="completed", outcome="failed", completed_at=clock.now())
    await step(manual, clock, 5.0)
    boss_state, op_state = await boss.recv(), await op.recv()
    assert [r["id"] for r in boss_state["data"]["runs"]] == [hidden, visible]  # active first
    assert op_state["data"]["runs"][0]["status"] == "failed"
    # The hidden run changing moves the owner's wall only.
    await db.update_run(hidden, status="running")
    await step(manual, clock, 5.0)
    assert (await boss.recv())["data"]["runs"][0]["status"] == "running"
    await sync(op)  # nothing arrived for the operator before the sync reply


async def test_slow_viewer_does_not_delay_others_and_stays_bounded(
    manual: RunningServer, clock: ManualClock, db: Factory, viewers: list[Viewer]
) -> None:
    """A viewer that never reads: the others get every state; it holds one pending state."""
    ws = await db.workspace()
    user = await db.user(ws, "owner")
    await heavy_wall(db, ws, message_size=900)
    target = await db.run(ws, status="running", created_at=clock.now())
    # The slow viewer: a socket with a tiny receive window that never reads after hello.
    slow = await raw_viewer(manual, user, [{"op": "subscribe", "ch": f"operations:{ws}"}])
    fast = await manual.connect(user)
    viewers.append(fast)
    await fast.subscribe(f"operations:{ws}")
    stats = manual.service.stats
    wall = manual.engine.watches[Channel(Kind.WALL, ws)]
    try:
        for processed in range(2, 40):
            await db.update_run(target, summary_counts={"total": 100, "processed": processed})
            await step(manual, clock, wall.interval or 10)
            state = await fast.recv()
            run = next(r for r in state["data"]["runs"] if r["id"] == target)
            assert run["summary_counts"]["processed"] == processed
            for session in manual.service.sessions:
                assert len(session.outbox) <= 1  # at most the newest state per channel
        assert stats.states_replaced > 0  # the slow one fell behind; its states were replaced
    finally:
        slow.close()


async def test_a_viewer_that_reads_nothing_is_closed_and_its_connection_freed(
    database_dsn: str, clock: ManualClock, db: Factory, viewers: list[Viewer]
) -> None:
    """After the send timeout the server gives up on it: 4429, then the TCP connection reset."""
    import psutil

    ws = await db.workspace()
    user = await db.user(ws, "owner")
    await heavy_wall(db, ws, message_size=900)
    target = await db.run(ws, status="running", created_at=clock.now())
    async with running_server(database_dsn, clock=clock, send_timeout=0.5) as server:
        slow = await raw_viewer(server, user, [{"op": "subscribe", "ch": f"operations:{ws}"}])
        local_port = slow.getsockname()[1]

        def server_side_open() -> bool:
            return any(
                c.laddr and c.raddr and c.laddr.port == server.port and c.raddr.port == local_port
                for c in psutil.Process().net_connections(kind="tcp")
            )

        try:
            await server.service.wait_sessions(bool)
            assert server_side_open()
            processed = 1
            async with asyncio.timeout(30):
                while server.service.sessions:  # each step sends it another ~500 KB wall
                    processed += 1
                    await db.update_run(
                        target, summary_counts={"total": 100, "processed": processed}
                    )
                    await step(server, clock, 1.0)
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(0.2):
                            await server.service.wait_sessions(lambda sessions: not sessions)
            assert not server.engine.watches and not server.service.per_user
            async with asyncio.timeout(10):
                # Reset by the server, not left to the kernel; sockets offer no event to await.
                while server_side_open():  # noqa: ASYNC110
                    await asyncio.sleep(0.1)
        finally:
            slow.close()
