"""Presence channels and client events (docs/pusher.md) on real servers over one database:
raw Pusher sockets, the host's signatures from Pusher's own Python library."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.conftest import RunningServer
from tests.pusher_support import APP, PusherSocket, host, pusher_server
from tests.test_processes import opspush_process

FAST = {"pusher_presence_interval": 0.5, "pusher_presence_expiry": 3.0}


@pytest.fixture(scope="module")
async def pair(database_dsn: str) -> AsyncIterator[tuple[RunningServer, RunningServer]]:
    """Two opspush services, each with its own LISTEN connection, on one database."""
    async with pusher_server(database_dsn, **FAST) as a, pusher_server(database_dsn, **FAST) as b:
        yield a, b


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


def _presence_auth(server: RunningServer, socket: PusherSocket, channel: str, user: Any,
                   info: Any = None) -> dict[str, Any]:  # fmt: skip
    data = {"user_id": user, "user_info": {"name": f"user {user}"} if info is None else info}
    return host(server).authenticate(channel=channel, socket_id=socket.socket_id, custom_data=data)


async def join(server: RunningServer, socket: PusherSocket, channel: str, user: Any,
               info: Any = None) -> dict[str, Any]:  # fmt: skip
    signed = _presence_auth(server, socket, channel, user, info)
    await socket.send("pusher:subscribe", {"channel": channel, **signed})
    return await socket.until(lambda f: f.get("channel") == channel)


def _ids(frame: dict[str, Any]) -> list[str]:
    assert frame["event"] == "pusher_internal:subscription_succeeded", frame
    presence = frame["data"]["presence"]
    assert presence["count"] == len(presence["ids"]) == len(presence["hash"])
    return list(presence["ids"])


def _member(event: str, user: str) -> Any:
    return lambda f: f["event"] == f"pusher_internal:{event}" and f["data"]["user_id"] == user


async def test_members_are_shared_by_both_processes_one_per_user(
    pair: tuple[RunningServer, RunningServer], sockets: list[PusherSocket]
) -> None:
    a, b = pair
    channel = "presence-room.shared"
    alice = await _open(a, sockets)
    assert _ids(await join(a, alice, channel, 1)) == ["1"]
    bob = await _open(b, sockets)
    first = await join(b, bob, channel, 2)
    if _ids(first) == ["2"]:  # alice's delta may still be on its way to b
        await bob.until(_member("member_added", "1"))
    else:
        assert _ids(first) == ["1", "2"]
        assert first["data"]["presence"]["hash"]["1"] == {"name": "user 1"}
    added = await alice.until(lambda f: f["event"].startswith("pusher_internal:member"))
    assert added["data"] == {"user_id": "2", "user_info": {"name": "user 2"}}
    # Bob's second tab, on the other process: already a member, nobody hears of it.
    bob_tab = await _open(a, sockets)
    assert _ids(await join(a, bob_tab, channel, 2)) == ["1", "2"]
    # Bob's first tab closes: a second one remains, he stays (carol, who joins after on
    # the same process, is the next thing alice hears of).
    await bob.close()
    carol = await _open(b, sockets)
    assert _ids(await join(b, carol, channel, 3)) == ["1", "2", "3"]
    heard = [await alice.until(lambda f: f["event"].startswith("pusher_internal:member"))]
    # Now his last tab: removed, on both processes.
    await bob_tab.close()
    heard.append(await alice.until(lambda f: f["event"].startswith("pusher_internal:member")))
    assert [(f["event"][16:], f["data"]["user_id"]) for f in heard] == [
        ("member_added", "3"),
        ("member_removed", "2"),
    ]
    assert (await carol.until(_member("member_removed", "2")))["data"] == {"user_id": "2"}
    for server in pair:
        assert server.service.pusher_hub is not None
        assert sorted(server.service.pusher_hub.roster.members(channel)) == ["1", "3"]


async def test_presence_refusals(
    pair: tuple[RunningServer, RunningServer], sockets: list[PusherSocket]
) -> None:
    a, _ = pair
    socket = await _open(a, sockets)
    other = await _open(a, sockets)
    channel = "presence-room.refusals"
    signed = _presence_auth(a, socket, channel, 1)
    status = lambda f: f["data"]["status"] if f["event"] == "pusher:subscription_error" else 0  # noqa: E731
    # channel_data other than the one signed, a signature for another socket, none at all.
    forged = {**signed, "channel_data": json.dumps({"user_id": 2, "user_info": None})}
    await socket.send("pusher:subscribe", {"channel": channel, **forged})
    assert status(await socket.until(lambda f: f.get("channel") == channel)) == 401
    await other.send("pusher:subscribe", {"channel": channel, **signed})
    assert status(await other.until(lambda f: f.get("channel") == channel)) == 401
    await socket.send("pusher:subscribe", {"channel": channel})
    assert status(await socket.until(lambda f: f.get("channel") == channel)) == 401
    # A user_info over 1 KB, signed or not, is refused.
    assert status(await join(a, socket, channel, 1, {"bio": "x" * 1100})) == 400
    # opspush's own channels have no presence.
    assert status(await join(a, socket, "presence-opspush.run.1", 1)) == 403
    assert _ids(await join(a, socket, channel, 1)) == ["1"]


async def test_member_limit_counts_distinct_users(
    database_dsn: str, sockets: list[PusherSocket]
) -> None:
    async with pusher_server(database_dsn, pusher_max_presence_members=2, **FAST) as server:
        channel = "presence-room.full"
        one, two, three, two_again = [await _open(server, sockets) for _ in range(4)]
        assert _ids(await join(server, one, channel, 1)) == ["1"]
        assert _ids(await join(server, two, channel, 2)) == ["1", "2"]
        refused = await join(server, three, channel, 3)
        assert refused["event"] == "pusher:subscription_error", refused
        assert refused["data"]["status"] == 403
        assert _ids(await join(server, two_again, channel, 2)) == ["1", "2"]  # a second tab
        for socket in sockets:
            await socket.close()


async def test_client_events_reach_the_other_subscribers_of_both_processes(
    pair: tuple[RunningServer, RunningServer], sockets: list[PusherSocket]
) -> None:
    a, b = pair
    private = "private-chat.whisper"
    sender, near, far = await _open(a, sockets), await _open(a, sockets), await _open(b, sockets)
    for socket, server in ((sender, a), (near, a), (far, b)):
        auth = host(server).authenticate(channel=private, socket_id=socket.socket_id)["auth"]
        assert (await socket.subscribe(private, auth))["event"].endswith("succeeded")
    await sender.send("client-typing", {"who": "me"}, channel=private)
    for socket in (near, far):
        frame = await socket.until(lambda f: f["event"] == "client-typing")
        assert frame == {"event": "client-typing", "channel": private, "data": {"who": "me"}}
    # Not to the sender: its next frame is the answer to its ping.
    await sender.send("pusher:ping")
    assert (await sender.recv())["event"] == "pusher:pong"
    # On a presence channel, with the sender's user id.
    channel = "presence-chat.whisper"
    assert _ids(await join(a, sender, channel, "ann"))
    await join(b, far, channel, "ben")
    await sender.send("client-typing", "a string", channel=channel)
    frame = await far.until(lambda f: f["event"] == "client-typing")
    assert frame == {"event": "client-typing", "channel": channel, "data": "a string",
                     "user_id": "ann"}  # fmt: skip


async def test_client_event_refusals(
    pair: tuple[RunningServer, RunningServer], sockets: list[PusherSocket]
) -> None:
    a, _ = pair
    socket, listener = await _open(a, sockets), await _open(a, sockets)
    assert (await socket.subscribe("public-room"))["event"].endswith("succeeded")
    private = "private-chat.limits"
    for s in (socket, listener):
        auth = host(a).authenticate(channel=private, socket_id=s.socket_id)["auth"]
        await s.subscribe(private, auth)
    error = lambda f: f["event"] == "pusher:error"  # noqa: E731
    for channel in ("public-room", "private-chat.not-subscribed", "private-opspush.run.1",
                    "private-encrypted-x"):  # fmt: skip
        await socket.send("client-x", {}, channel=channel)
        assert (await socket.until(error))["data"]["code"] == 4301, channel
    await socket.send("client-x", {"big": "x" * 11_000}, channel=private)
    assert (await socket.until(error))["data"]["code"] == 4301
    # Over the rate: 10 a second pass, the 11th is refused and dropped.
    for n in range(11):
        await socket.send("client-n", {"n": n}, channel=private)
    assert (await socket.until(error))["data"] == {
        "code": 4301,
        "message": "client event rate limit reached",
    }
    got = [(await listener.until(lambda f: f["event"] == "client-n"))["data"]["n"]]
    while got[-1] < 9:
        got.append((await listener.until(lambda f: f["event"] == "client-n"))["data"]["n"])
    assert got == list(range(10))


async def test_a_killed_process_loses_its_members_within_the_expiry(
    pair: tuple[RunningServer, RunningServer], sockets: list[PusherSocket], database_dsn: str
) -> None:
    a, _ = pair
    channel = "presence-room.killed"
    watcher = await _open(a, sockets)
    assert _ids(await join(a, watcher, channel, "watcher")) == ["watcher"]
    pusher_env = {
        "OPSPUSH_PUSHER_APP_ID": APP.app_id,
        "OPSPUSH_PUSHER_KEY": APP.key,
        "OPSPUSH_PUSHER_SECRET": APP.secret,
        "OPSPUSH_PUSHER_PRESENCE_INTERVAL": "0.5",  # fast presence snapshots
    }
    async with opspush_process(database_dsn, **pusher_env) as (process, port):
        remote = RunningServer(a.settings, a.service, port)  # only its port is used
        doomed = await _open(remote, sockets)
        await join(remote, doomed, channel, "doomed")
        await watcher.until(_member("member_added", "doomed"))
        process.kill()  # SIGKILL: no goodbye, no leave
        await process.wait()
        started = asyncio.get_running_loop().time()
        await watcher.until(_member("member_removed", "doomed"), timeout=10)
        waited = asyncio.get_running_loop().time() - started
    sockets.remove(doomed)
    assert waited <= FAST["pusher_presence_expiry"] + 1.5, waited
