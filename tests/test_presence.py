"""Presence channels and client events (docs/pusher.md) on real servers over one database:
raw Pusher sockets, the host's signatures from Pusher's own Python library."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from tests.conftest import SECRET, RunningServer, free_socket
from tests.pusher_support import APP, PusherSocket, host, pusher_server

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
