"""`/app/{key}` and the HTTP API as docs/pusher.md describes them: a real server and database, a raw
Pusher-protocol client, and the host's side signed by Pusher's own Python library."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pusher as pusher_library
import pytest
import uvicorn
import websockets
from pusher.signature import sign

import opspush
from opspush.core.clock import ManualClock
from opspush.core.protocol import CLOSE_TOO_MANY
from opspush.pusher import protocol as pusher
from opspush.web.connection import wire_text
from tests.conftest import RunningServer, Viewer, running_server, step
from tests.factories import Factory
from tests.pusher_support import APP, PusherSocket, channel_auth, host, pusher_server, signin


@pytest.fixture(scope="module")
async def ps(database_dsn: str) -> AsyncIterator[RunningServer]:
    async with pusher_server(database_dsn) as running:
        yield running


@pytest.fixture
async def sockets() -> AsyncIterator[list[PusherSocket]]:
    opened: list[PusherSocket] = []
    yield opened
    for socket in opened:
        await socket.close()


async def _open(server: RunningServer, sockets: list[PusherSocket]) -> PusherSocket:
    socket = await PusherSocket.open(server)
    sockets.append(socket)
    return socket


async def test_connection_established_and_ping_pong(
    ps: RunningServer, sockets: list[PusherSocket]
) -> None:
    a = await _open(ps, sockets)
    b = await _open(ps, sockets)
    assert a.socket_id != b.socket_id
    assert a.socket_id.count(".") == 1 and all(p.isdigit() for p in a.socket_id.split("."))
    assert a.activity_timeout == 120
    await a.send("pusher:ping")
    assert (await a.recv())["event"] == "pusher:pong"


async def test_socket_ids_are_unguessable(ps: RunningServer, sockets: list[PusherSocket]) -> None:
    """Random in both parts, not `<process>.<counter>`; still the shape the libraries check."""
    opened = [await _open(ps, sockets) for _ in range(4)]
    ids = [socket.socket_id for socket in opened]
    firsts = {int(i.split(".")[0]) for i in ids}
    seconds = sorted(int(i.split(".")[1]) for i in ids)
    assert len(firsts) == len(ids), ids  # not one per process
    assert seconds != list(range(seconds[0], seconds[0] + len(ids))), ids  # not a counter
    client = host(ps)
    for socket_id in ids:
        assert pusher.valid_socket_id(socket_id)
        # Pusher's own library validates the socket id it signs for.
        assert client.authenticate(channel="private-orders", socket_id=socket_id)["auth"]


@pytest.mark.parametrize(
    ("path", "code"),
    [
        ("/app/wrong-key?protocol=7", 4001),
        (f"/app/{APP.key}?protocol=6", 4007),
        (f"/app/{APP.key}", 4008),
        (f"/app/{APP.key}?protocol=seven", 4006),
    ],
)
async def test_wrong_key_and_protocol(ps: RunningServer, path: str, code: int) -> None:
    async with websockets.connect(f"ws://127.0.0.1:{ps.port}{path}") as connection:
        frame = json.loads(await asyncio.wait_for(connection.recv(), 10))
        assert frame["event"] == "pusher:error" and frame["data"]["code"] == code
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(connection.recv(), 10)
        assert connection.close_code == code


async def test_a_run_from_queued_to_its_end_on_a_signed_channel(
    ps: RunningServer, db: Factory, sockets: list[PusherSocket]
) -> None:
    ws = await db.workspace()
    run = await db.run(ws, summary_counts={"total": 2, "processed": 0})
    socket = await _open(ps, sockets)
    channel = f"private-opspush.run.{run}"
    answer = await socket.subscribe(channel, channel_auth(host(ps), socket.socket_id, channel))
    assert answer["event"] == "pusher_internal:subscription_succeeded"
    first = await socket.recv()
    assert first["event"] == "opspush.state" and first["channel"] == channel
    assert first["data"]["data"]["status"] == "queued" and first["data"]["interval"] == 1
    await db.update_run(run, status="running")
    assert (await socket.recv())["data"]["data"]["status"] == "running"
    await db.update_run(run, status="completed", outcome="succeeded")
    final = await socket.recv()
    assert final["data"]["data"]["status"] == "succeeded" and final["data"]["interval"] is None
    assert await socket.recv() == {
        "event": "opspush.end",
        "channel": channel,
        "data": {"reason": "terminal"},
    }
    # Unlike /ws, the connection stays open: Echo keeps one socket for everything.
    await socket.send("pusher:ping")
    assert (await socket.recv())["event"] == "pusher:pong"


async def test_subscription_errors(
    ps: RunningServer, db: Factory, sockets: list[PusherSocket]
) -> None:
    ws = await db.workspace()
    run = await db.run(ws, status="running")
    socket = await _open(ps, sockets)
    other = await _open(ps, sockets)
    client = host(ps)
    channel = f"private-opspush.run.{run}"

    async def status(name: str, auth: str | None) -> int:
        frame = await socket.subscribe(name, auth)
        assert frame["event"] == "pusher:subscription_error", frame
        value: int = frame["data"]["status"]
        return value

    assert await status(channel, None) == 401
    assert await status(channel, f"{APP.key}:{'0' * 64}") == 401
    assert await status(channel, channel_auth(client, other.socket_id, channel)) == 401
    wrong_secret = host(ps, secret="not-the-secret-0123456789")
    assert await status(channel, channel_auth(wrong_secret, socket.socket_id, channel)) == 401
    missing = "private-opspush.run.999999999"
    assert await status(missing, channel_auth(client, socket.socket_id, missing)) == 404
    unknown = "private-opspush.nothing.1"
    assert await status(unknown, channel_auth(client, socket.socket_id, unknown)) == 404
    wall = f"private-opspush.operations.{ws}"
    assert await status(wall, channel_auth(client, socket.socket_id, wall)) == 403
    assert await status(f"opspush.run.{run}", None) == 403
    assert await status(f"presence-opspush.run.{run}", None) == 403
    assert await status("presence-chat", None) == 401  # presence needs a signature too
    # After all that, the socket still works.
    good = await socket.subscribe(channel, channel_auth(client, socket.socket_id, channel))
    assert good["event"] == "pusher_internal:subscription_succeeded"


async def test_a_non_canonical_id_is_no_channel(
    ps: RunningServer, db: Factory, sockets: list[PusherSocket]
) -> None:
    """`…run.01` names run 1 in another spelling; its events would say `…run.1`: 404,
    signed in or not, however validly the host signed the name."""
    ws = await db.workspace()
    owner = await db.user(ws, "owner")
    run = await db.run(ws, status="running")
    client = host(ps)
    for signed_in in (False, True):
        socket = await _open(ps, sockets)
        if signed_in:
            assert (await signin(client, socket, owner))["event"] == "pusher:signin_success"
        for name in (f"private-opspush.run.0{run}", f"private-opspush.operations.00{ws}"):
            frame = await socket.subscribe(name, channel_auth(client, socket.socket_id, name))
            assert frame["event"] == "pusher:subscription_error", (signed_in, frame)
            assert frame["data"]["status"] == 404
        canonical = f"private-opspush.run.{run}"
        good = await socket.subscribe(canonical, channel_auth(client, socket.socket_id, canonical))
        assert good["event"] == "pusher_internal:subscription_succeeded"


async def test_client_events_bad_frames_and_a_flood(
    database_dsn: str, db: Factory, sockets: list[PusherSocket]
) -> None:
    async with pusher_server(database_dsn, rate_per_second=1.0, rate_burst=5) as server:
        socket = await _open(server, sockets)
        bystander = await _open(server, sockets)
        await socket.send("client-typing", {"x": 1}, channel="private-chat")
        frame = await socket.recv()
        assert frame == {
            "event": "pusher:error",
            "data": {"code": 4301, "message": "not subscribed to this channel"},
        }
        await socket.connection.send("not json")
        assert (await socket.recv())["event"] == "pusher:error"
        await socket.send("pusher:whatever")
        assert (await socket.recv())["data"]["message"] == "unknown event"
        for n in range(40):
            await socket.send("pusher:subscribe", {"channel": f"chat-{n}"})
        assert await socket.closed() == 4100
        await bystander.send("pusher:ping")
        assert (await bystander.recv())["event"] == "pusher:pong"
        # Binary frames spend from the same bucket (issue 13, finding 3, on this endpoint too).
        binary = await _open(server, sockets)
        for _ in range(40):
            await binary.connection.send(b"\x00")
        assert await binary.closed() == 4100


async def test_signed_in_connections_follow_the_access_rules(
    ps: RunningServer, db: Factory, sockets: list[PusherSocket]
) -> None:
    ws = await db.workspace()
    tenant = await db.tenant(ws)
    operator = await db.user(ws, "operator", tenants=[tenant])
    auditor = await db.user(ws, "auditor-no-caps", tenants=[tenant])
    stranger = await db.user()
    run = await db.run(ws, tenant, status="running")
    client = host(ps)
    channel = f"private-opspush.run.{run}"

    async def answer(user_id: int) -> tuple[PusherSocket, dict[str, Any]]:
        socket = await _open(ps, sockets)
        signed = await signin(client, socket, user_id)
        assert signed["event"] == "pusher:signin_success", signed
        auth = channel_auth(client, socket.socket_id, channel)
        return socket, await socket.subscribe(channel, auth)

    _, refused = await answer(stranger)
    assert refused["data"]["status"] == 404
    _, refused = await answer(auditor)
    assert refused["data"]["status"] == 403
    watching, accepted = await answer(operator)
    assert accepted["event"] == "pusher_internal:subscription_succeeded"
    assert (await watching.recv())["event"] == "opspush.state"
    wall = f"private-opspush.operations.{ws}"
    answer_wall = await watching.subscribe(wall, channel_auth(client, watching.socket_id, wall))
    assert answer_wall["event"] == "pusher_internal:subscription_succeeded"
    # pusher-js subscribes to the user's own channel after sign-in; only that one is allowed.
    own = await watching.subscribe(f"#server-to-user-{operator}")
    assert own["event"] == "pusher_internal:subscription_succeeded"
    assert (await watching.subscribe(f"#server-to-user-{stranger}"))["data"]["status"] == 403

    await db.execute("DELETE FROM tenant_entitlements WHERE user_id = $1", operator)
    end = await watching.until(lambda f: f["event"] == "opspush.end")
    assert end == {"event": "opspush.end", "channel": channel, "data": {"reason": "revoked"}}


async def test_a_bad_signin_is_refused_with_4009(
    ps: RunningServer, db: Factory, sockets: list[PusherSocket]
) -> None:
    socket = await _open(ps, sockets)
    signed = host(ps).authenticate_user("1.1", {"id": "7"})  # signed for another socket
    await socket.send("pusher:signin", {"auth": signed["auth"], "user_data": signed["user_data"]})
    frame = await socket.recv()
    assert frame["event"] == "pusher:error" and frame["data"]["code"] == 4009
    assert await socket.closed() == 4009


async def test_activity_timeout_pings_then_closes_4201(
    database_dsn: str, sockets: list[PusherSocket]
) -> None:
    async with pusher_server(
        database_dsn, pusher_activity_timeout=1, pusher_pong_timeout=0.5
    ) as server:
        silent = await _open(server, sockets)
        assert silent.activity_timeout == 1
        assert (await silent.recv())["event"] == "pusher:ping"
        frame = await silent.recv()
        assert frame["event"] == "pusher:error" and frame["data"]["code"] == 4201
        assert await silent.closed() == 4201


async def test_a_ws_viewer_and_a_pusher_viewer_share_one_read(
    ps: RunningServer, db: Factory, sockets: list[PusherSocket], viewers: list[Viewer]
) -> None:
    """The same run through both endpoints: one watch, read once per due tick for both."""
    ws = await db.workspace()
    user = await db.user(ws, "owner")
    run = await db.run(ws, status="running")
    viewer = await ps.connect(user)
    viewers.append(viewer)
    assert (await viewer.subscribe(f"run:{run}"))["type"] == "state"
    socket = await _open(ps, sockets)
    channel = f"private-opspush.run.{run}"
    await socket.subscribe(channel, channel_auth(host(ps), socket.socket_id, channel))
    await socket.recv()  # its first state
    watch = next(w for c, w in ps.engine.watches.items() if c.name == f"run:{run}")
    assert len(watch.subs) == 2
    stats = ps.service.stats
    before = (stats.channel_reads["run"], stats.states_pushed["run"])
    for processed in (1, 2, 3):
        await db.update_run(run, summary_counts={"total": 3, "processed": processed})
        frame = await viewer.recv()
        assert frame["data"]["summary_counts"]["processed"] == processed
        pushed = await socket.recv()
        assert pushed["data"]["data"]["summary_counts"]["processed"] == processed
    reads = stats.channel_reads["run"] - before[0]
    pushes = stats.states_pushed["run"] - before[1]
    # Each read of this channel served both viewers: pushes come in pairs from the same reads.
    assert pushes == 6
    assert reads * 2 >= pushes and reads <= 12


# -- the HTTP API ------------------------------------------------------------------------


async def _call(function: Any, *args: Any) -> Any:
    return await asyncio.to_thread(function, *args)


async def test_events_reach_public_and_private_channels_except_the_sender(
    ps: RunningServer, sockets: list[PusherSocket]
) -> None:
    client = host(ps)
    a = await _open(ps, sockets)
    b = await _open(ps, sockets)
    for socket in (a, b):
        assert (await socket.subscribe("orders"))["event"].endswith("subscription_succeeded")
        auth = channel_auth(client, socket.socket_id, "private-user.7")
        assert (await socket.subscribe("private-user.7", auth))["event"].endswith("succeeded")
    await _call(client.trigger, ["orders", "private-user.7"], "OrderShipped", {"id": 1})
    for socket in (a, b):
        got = {
            (f["channel"], f["event"]): f["data"]
            for f in [await socket.recv(), await socket.recv()]
        }
        assert got == {
            ("orders", "OrderShipped"): {"id": 1},
            ("private-user.7", "OrderShipped"): {"id": 1},
        }
    await _call(client.trigger, "orders", "Excluded", "x", a.socket_id)
    await _call(client.trigger_batch, [{"channel": "orders", "name": "Batched", "data": "y"}])
    assert (await b.recv())["event"] == "Excluded"
    assert (await b.recv())["event"] == "Batched"
    assert (await a.recv())["event"] == "Batched"  # the excluded one never came


async def test_a_large_event_travels_in_chunks(
    ps: RunningServer, sockets: list[PusherSocket]
) -> None:
    """10 KB of data, more than one NOTIFY payload holds, arrives whole."""
    socket = await _open(ps, sockets)
    await socket.subscribe("big")
    data = "é" + "x" * (10 * 1024 - 3)  # 10,240 bytes in UTF-8
    await _call(host(ps).trigger, "big", "Big", data)
    frame = await socket.recv()
    assert frame["event"] == "Big" and frame["data"] == data


async def _signed_post(server: RunningServer, body: bytes, skew: int) -> int:
    """A request signed with the library's own `sign`, `skew` seconds off, raw body."""
    path = f"/apps/{APP.app_id}/events"
    query = {
        "auth_key": APP.key,
        "auth_timestamp": str(int(time.time()) + skew),
        "auth_version": "1.0",
        "body_md5": hashlib.md5(body).hexdigest(),
    }
    signed = "&".join(f"{k}={v}" for k, v in sorted(query.items()))
    query["auth_signature"] = sign(APP.secret, f"POST\n{path}\n{signed}")
    async with httpx.AsyncClient() as http:
        response = await http.post(f"{server.http_url}{path}", params=query, content=body)
    return response.status_code


async def test_api_errors_deliver_nothing(ps: RunningServer, sockets: list[PusherSocket]) -> None:
    socket = await _open(ps, sockets)
    await socket.subscribe("orders")
    client = host(ps)
    with pytest.raises(pusher_library.errors.PusherBadAuth):
        await _call(host(ps, secret="wrong-secret-0123456789").trigger, "orders", "E", "x")
    with pytest.raises(pusher_library.errors.PusherBadStatus, match="404"):
        await _call(host(ps, app_id="999").trigger, "orders", "E", "x")
    with pytest.raises(pusher_library.errors.PusherBadStatus, match="413"):
        await _call(client.trigger, "orders", "E", "x" * (10 * 1024 + 1))
    with pytest.raises(pusher_library.errors.PusherForbidden):
        await _call(client.trigger, ["orders", "private-opspush.run.1"], "E", "x")
    with pytest.raises(pusher_library.errors.PusherForbidden):
        await _call(client.trigger, "opspush.anything", "E", "x")
    with pytest.raises(pusher_library.errors.PusherForbidden):
        await _call(client.trigger, "presence-opspush.run.1", "E", "x")
    batch = [
        {"channel": "orders", "name": "First", "data": "ok"},
        {"channel": "private-opspush.run.1", "name": "Second", "data": "no"},
    ]
    with pytest.raises(pusher_library.errors.PusherForbidden):
        await _call(client.trigger_batch, batch)
    assert await _signed_post(ps, b'{"name": "E", "channels": ["orders"]', 0) == 400
    assert (
        await _signed_post(ps, b'{"name": "E", "channels": ["orders"], "data": "x"}', -601) == 401
    )
    # Nothing of the above arrived: the next event is the first frame the socket sees.
    await _call(client.trigger, "orders", "After", "fine")
    assert (await socket.recv())["event"] == "After"


async def test_terminate_connections_closes_that_users_sockets(
    ps: RunningServer, db: Factory, sockets: list[PusherSocket]
) -> None:
    user = await db.user()
    client = host(ps)
    signed_in = await _open(ps, sockets)
    assert (await signin(client, signed_in, user))["event"] == "pusher:signin_success"
    bystander = await _open(ps, sockets)
    await _call(client.terminate_user_connections, str(user))
    frame = await signed_in.recv()
    assert frame["event"] == "pusher:error" and frame["data"]["code"] == 4009
    assert await signed_in.closed() == 4009
    await bystander.send("pusher:ping")
    assert (await bystander.recv())["event"] == "pusher:pong"


async def test_terminate_connections_closes_that_users_ws_sockets_on_every_process(
    ps: RunningServer, database_dsn: str, db: Factory, sockets: list[PusherSocket]
) -> None:
    """`/ws` sockets of the user close with 4401, here and on another process; others stay."""
    ws = await db.workspace()
    user, other = await db.user(), await db.user()
    await db.member(ws, other, "operator")
    run = await db.run(ws, status="running")
    async with pusher_server(database_dsn) as second:
        assert second.service.listener is not None
        await second.service.listener.connected.wait()
        here = await ps.connect(user)
        there = await second.connect(user)
        bystander = await second.connect(other)
        signed_in = await _open(second, sockets)
        assert (await signin(host(ps), signed_in, user))["event"] == "pusher:signin_success"
        await _call(host(ps).terminate_user_connections, str(user))
        assert await here.closed() == 4401
        assert await there.closed() == 4401
        assert await signed_in.closed() == 4009
        assert (await bystander.subscribe(f"run:{run}"))["type"] == "state"
        await bystander.close()


async def test_send_to_user_reaches_that_users_signed_in_sockets_on_every_process(
    ps: RunningServer, database_dsn: str, db: Factory, sockets: list[PusherSocket]
) -> None:
    """Pusher's `send_to_user` (`#server-to-user-<id>`), from Pusher's own library."""
    user, other = await db.user(), await db.user()
    client = host(ps)
    async with pusher_server(database_dsn) as second:
        assert second.service.listener is not None
        await second.service.listener.connected.wait()
        mine = [await _open(ps, sockets), await _open(second, sockets)]
        theirs = await _open(second, sockets)
        for socket, who in [(mine[0], user), (mine[1], user), (theirs, other)]:
            assert (await signin(client, socket, who))["event"] == "pusher:signin_success"
            subscribed = await socket.subscribe(f"#server-to-user-{who}")
            assert subscribed["event"] == "pusher_internal:subscription_succeeded"
        await _call(client.send_to_user, str(user), "Notice", {"n": 1})
        for socket in mine:
            notice = await socket.until(lambda f: f["event"] == "Notice")
            assert notice["channel"] == f"#server-to-user-{user}"
            assert notice["data"] == {"n": 1}
        # The other user's socket got nothing of it: its next frame is its own event.
        await _call(client.send_to_user, str(other), "After", {})
        assert (await theirs.recv())["event"] == "After"
        assert await _signed_post(ps, _user_event("#server-to-user-007"), 0) == 400


def _user_event(channel: str) -> bytes:
    return json.dumps({"name": "E", "channels": [channel], "data": "x"}).encode()


async def test_a_hidden_tab_unsubscribes_and_resubscribes(
    ps: RunningServer, db: Factory, sockets: list[PusherSocket]
) -> None:
    """No pause in Pusher: leaving and coming back gives subscription_succeeded and the state."""
    ws = await db.workspace()
    run = await db.run(ws, status="running")
    socket = await _open(ps, sockets)
    channel = f"private-opspush.run.{run}"
    auth = channel_auth(host(ps), socket.socket_id, channel)
    assert (await socket.subscribe(channel, auth))["event"].endswith("subscription_succeeded")
    assert (await socket.recv())["data"]["data"]["status"] == "running"
    await socket.send("pusher:unsubscribe", {"channel": channel})
    await db.update_run(run, summary_counts={"total": 4, "processed": 2})
    again = await socket.subscribe(channel, auth)
    assert again["event"] == "pusher_internal:subscription_succeeded"
    state = await socket.recv()
    assert state["event"] == "opspush.state" and state["data"]["data"]["progress"] == 0.5


# -- the frame layer -------------------------------------------------------------------------


async def test_idle_pusher_sockets_hold_no_task_and_a_frame_is_encoded_once_for_all(
    database_dsn: str, clock: ManualClock, db: Factory, sockets: list[PusherSocket]
) -> None:
    """The Pusher endpoint on `/ws`'s frame layer (web/engine_socket.py): no task per idle
    socket, and a state, or a host event, serialized once however many sockets it goes to."""
    ws = await db.workspace()
    run = await db.run(ws, status="running", summary_counts={"total": 10, "processed": 0})
    channel = f"private-opspush.run.{run}"
    server_code = (os.path.dirname(opspush.__file__), os.path.dirname(uvicorn.__file__))

    def server_tasks() -> int:
        files = [t.get_coro().cr_code.co_filename for t in asyncio.all_tasks()]  # type: ignore[union-attr]
        return sum(1 for f in files if f.startswith(server_code))

    async with running_server(database_dsn, clock=clock, pusher=APP) as server:
        before = server_tasks()
        for _ in range(12):
            socket = await _open(server, sockets)
            auth = channel_auth(host(server), socket.socket_id, channel)
            assert (await socket.subscribe(channel, auth))["event"].endswith("succeeded")
            assert (await socket.recv())["event"] == "opspush.state"
            assert (await socket.subscribe("news"))["event"].endswith("succeeded")
        assert server_tasks() == before  # the ASGI stack ran three per socket

        encoded = wire_text.cache_info().misses
        await db.update_run(run, summary_counts={"total": 10, "processed": 1})
        await step(server, clock, 1.0)
        for socket in sockets:
            state = await socket.recv()
            assert state["data"]["data"]["summary_counts"]["processed"] == 1
        assert wire_text.cache_info().misses == encoded + 1  # one encoding for twelve sockets

        await _call(host(server).trigger, "news", "posted", {"n": 1})
        for socket in sockets:
            assert (await socket.recv())["event"] == "posted"
        assert wire_text.cache_info().misses == encoded + 2


async def test_the_per_user_limit_counts_signed_in_pusher_sockets_and_ws_ones(
    database_dsn: str, db: Factory, sockets: list[PusherSocket], viewers: list[Viewer]
) -> None:
    user = await db.user(await db.workspace(), "owner")
    async with pusher_server(database_dsn, max_connections_per_user=2) as server:
        viewers.append(await server.connect(user))
        signed = await _open(server, sockets)
        assert (await signin(host(server), signed, user))["event"] == "pusher:signin_success"
        # A third socket of the user: a Pusher one is refused at its sign-in...
        third = await _open(server, sockets)
        refused = await signin(host(server), third, user)
        assert refused["event"] == "pusher:error" and refused["data"]["code"] == 4100
        assert await third.closed() == pusher.OVER_CAPACITY
        # ... a `/ws` one after its hello; an unsigned Pusher socket is not the user's.
        ws = await websockets.connect(server.ws_url)
        await ws.send(json.dumps({"op": "hello", "token": server.token(user)}))
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 10)
        assert ws.close_code == CLOSE_TOO_MANY
        await _open(server, sockets)
        # Closing the signed-in socket frees its place.
        await signed.close()
        async with asyncio.timeout(10):
            await server.service.wait_sessions(lambda open_now: len(open_now) == 2)
        assert server.service.per_user[user] == 1
        viewers.append(await server.connect(user))


async def test_an_upgrade_to_a_path_nobody_serves_is_a_404(ps: RunningServer) -> None:
    for path in ("/nowhere", "/app/", f"/app/{APP.key}/more", "/ws/extra"):
        with pytest.raises(websockets.InvalidStatus) as refused:
            await websockets.connect(f"ws://127.0.0.1:{ps.port}{path}")
        assert refused.value.response.status_code == 404, path
