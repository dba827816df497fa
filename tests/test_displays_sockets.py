"""Wall displays on the socket: a display's token watches its wall and nothing else, only
while its approver may, and a revocation closes its sockets on every process within 2 s."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import httpx
import websockets

from opspush.database import displays
from tests.conftest import RunningServer, Viewer, running_server
from tests.factories import Factory
from tests.test_displays_cli import display_cli


async def paired(pool: asyncpg.Pool, workspace: int, approver: int) -> tuple[int, str]:
    """A display approved and collected, as its page would: (its id, its credential)."""
    made = await displays.create_pairing(pool, "198.51.100.20", "t", ttl=600, rate=0, max_pending=0)
    assert isinstance(made, displays.NewPairing)
    display = await displays.approve_as(pool, approver, made.user_code, workspace, "wall")
    assert isinstance(display, displays.DisplayRow), display
    polled = await displays.poll_pairing(pool, made.device_code)
    assert polled.credential is not None
    return display.id, polled.credential


async def display_token(server: RunningServer, credential: str) -> str:
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        response = await http.post("/api/displays/token", json={"credential": credential})
    assert response.status_code == 200, response.text
    token: str = response.json()["token"]
    return token


async def connect(server: RunningServer, token: str) -> Viewer:
    viewer = Viewer(await websockets.connect(server.ws_url))
    await viewer.send({"op": "hello", "token": token})
    return viewer


async def test_a_display_watches_its_wall_and_nothing_else(
    server: RunningServer, db: Factory, viewers: list[Viewer]
) -> None:
    workspace = await db.workspace("NOC")
    other = await db.workspace()
    approver = await db.user(workspace, "owner")
    await db.member(other, approver, "owner")  # the approver may watch more; the display not
    run = await db.run(workspace, status="running")
    display_id, credential = await paired(server.service.pool, workspace, approver)
    viewer = await connect(server, await display_token(server, credential))
    viewers.append(viewer)
    welcome = await viewer.recv()
    assert welcome["type"] == "welcome" and welcome["user_id"] == approver
    state = await viewer.subscribe(f"operations:{workspace}")
    assert state["type"] == "state" and [r["id"] for r in state["data"]["runs"]] == [run]
    for ch in [f"operations:{other}", f"run:{run}", f"review-pack:{await db.tenant(workspace)}"]:
        refused = await viewer.subscribe(ch)
        assert (refused["type"], refused["ch"], refused["code"]) == ("error", ch, "forbidden")
    sockets = [s for s in server.service.sessions if getattr(s, "display_id", None) == display_id]
    assert len(sockets) == 1


async def test_a_display_ends_revoked_when_its_approver_loses_the_wall(
    server: RunningServer, db: Factory, viewers: list[Viewer]
) -> None:
    workspace = await db.workspace()
    approver = await db.user(workspace, "owner")
    _, credential = await paired(server.service.pool, workspace, approver)
    viewer = await connect(server, await display_token(server, credential))
    viewers.append(viewer)
    await viewer.recv()
    assert (await viewer.subscribe(f"operations:{workspace}"))["type"] == "state"
    await server.service.pool.execute(
        "DELETE FROM workspace_memberships WHERE user_id = $1", approver
    )
    end = await viewer.until(lambda f: f["type"] == "end")
    assert end == {"type": "end", "ch": f"operations:{workspace}", "reason": "revoked"}
    assert await viewer.closed() == 4000
    # And its page, asking for a new token, is told to pair again.
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        response = await http.post("/api/displays/token", json={"credential": credential})
    assert response.status_code == 401


async def test_a_revocation_closes_the_sockets_on_every_process_within_2_s(
    database_dsn: str, server: RunningServer, db: Factory, viewers: list[Viewer]
) -> None:
    workspace = await db.workspace()
    approver = await db.user(workspace, "owner")
    display_id, credential = await paired(server.service.pool, workspace, approver)
    token = await display_token(server, credential)
    async with running_server(database_dsn) as second:
        for process in (server, second):
            assert process.service.listener is not None
            await asyncio.wait_for(process.service.listener.connected.wait(), 10)
        on_first, on_second = await connect(server, token), await connect(second, token)
        viewers += [on_first, on_second]
        for viewer in (on_first, on_second):
            assert (await viewer.recv())["type"] == "welcome"
            assert (await viewer.subscribe(f"operations:{workspace}"))["type"] == "state"
        started = time.monotonic()
        rc, _, err = await asyncio.to_thread(display_cli, database_dsn, "revoke", str(display_id))
        assert rc == 0, err
        revoked_at = time.monotonic()
        codes = await asyncio.gather(on_first.closed(5), on_second.closed(5))
        closed_after = time.monotonic() - revoked_at
        assert codes == [4401, 4401]
        assert closed_after < 2.0, (closed_after, revoked_at - started)
        # Its token, still within its lifetime, no longer signs in anywhere.
        for process in (server, second):
            again = await connect(process, token)
            viewers.append(again)
            assert await again.closed() == 4401


async def test_a_display_token_is_refused_once_its_display_is_revoked(
    server: RunningServer, db: Factory, viewers: list[Viewer]
) -> None:
    workspace = await db.workspace()
    approver = await db.user(workspace, "owner")
    display_id, credential = await paired(server.service.pool, workspace, approver)
    token = await display_token(server, credential)
    assert await displays.revoke(server.service.pool, display_id)
    viewer = await connect(server, token)
    viewers.append(viewer)
    assert await viewer.closed() == 4401
