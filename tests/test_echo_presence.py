"""The real Laravel Echo's `join()` and `whisper` against two opspush services on one
database: one Echo per service, the member list the same on both, one member for a user with
two tabs."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.conftest import RunningServer
from tests.echo_support import EchoProcess, echo_listener, require_echo
from tests.host_app import Host, running_host
from tests.pusher_support import APP, pusher_server

ROOM = "chat.7"


@pytest.fixture(scope="module")
async def pair(database_dsn: str) -> AsyncIterator[tuple[RunningServer, RunningServer]]:
    require_echo()
    fast = {"pusher_presence_interval": 0.5, "pusher_presence_expiry": 3.0}
    async with pusher_server(database_dsn, **fast) as a, pusher_server(database_dsn, **fast) as b:
        yield a, b


def _config(server: RunningServer, console: Host) -> dict[str, Any]:
    return {
        "port": server.port,
        "key": APP.key,
        "authEndpoint": console.auth_endpoint,
        "userAuthEndpoint": console.user_auth_endpoint,
        "presence": ROOM,
    }


@contextlib.asynccontextmanager
async def _user(server: RunningServer, user_id: int, name: str) -> AsyncIterator[Host]:
    async with running_host(server) as console:
        console.allowed = {f"presence-{ROOM}"}
        console.presence = {"user_id": user_id, "user_info": {"id": user_id, "name": name}}
        yield console


async def _members(server: RunningServer, count: int) -> None:
    """Until this service's union has `count` members (the other's delta has arrived)."""
    hub = server.service.pusher_hub
    assert hub is not None
    async with asyncio.timeout(10):
        # The hub's state, read between turns of this loop: a wait for it, with a deadline.
        while len(hub.roster.members(f"presence-{ROOM}")) != count:  # noqa: ASYNC110
            await asyncio.sleep(0.02)


async def _gone(server: RunningServer, user_id: str) -> None:
    """Until this service holds no socket of the user in the room."""
    hub = server.service.pusher_hub
    assert hub is not None
    async with asyncio.timeout(10):
        while user_id in hub.present.get(f"presence-{ROOM}", {}):  # noqa: ASYNC110
            await asyncio.sleep(0.02)


def _kind(*kinds: str) -> Any:
    return lambda line: line["kind"] in (*kinds, "error", "pusher_error")


async def _here(echo: EchoProcess) -> list[str]:
    line = await echo.until(_kind("here"))
    assert line["kind"] == "here", line
    return sorted(user["name"] for user in line["users"])


async def test_echo_join_here_joining_whisper_leaving_across_two_processes(
    pair: tuple[RunningServer, RunningServer],
) -> None:
    a, b = pair
    async with (
        _user(a, 1, "Ann") as ann_console,
        _user(b, 2, "Ben") as ben_console,
        echo_listener(_config(a, ann_console)) as ann,
    ):
        assert await _here(ann) == ["Ann"]
        await _members(b, 1)
        async with echo_listener(_config(b, ben_console)) as ben:
            assert await _here(ben) == ["Ann", "Ben"]
            joining = await ann.until(_kind("joining"))
            assert joining == {"kind": "joining", "user": {"id": 2, "name": "Ben"}}
            # Ben's second tab, on Ann's process: the same list, and no second Ben.
            async with echo_listener(_config(a, ben_console)) as ben_tab:
                assert await _here(ben_tab) == ["Ann", "Ben"]
                await ben.command({"whisper": "typing", "data": {"who": "Ben"}})
                for echo in (ann, ben_tab):
                    line = await echo.until(_kind("whisper", "joining", "leaving"))
                    assert line == {"kind": "whisper", "payload": {"who": "Ben"}}, line
                await ann.command({"whisper": "typing", "data": {"who": "Ann"}})
                line = await ben.until(_kind("whisper", "joining", "leaving"))
                assert line == {"kind": "whisper", "payload": {"who": "Ann"}}, line
            # One tab closed (once Ann's process has seen it go): Ben is still here, the
            # next Ann hears is his whisper, not his leaving. Then the last: he leaves.
            await _gone(a, "2")
            await _members(a, 2)
            await ben.command({"whisper": "typing", "data": {"who": "Ben again"}})
            line = await ann.until(_kind("whisper", "joining", "leaving"))
            assert line == {"kind": "whisper", "payload": {"who": "Ben again"}}, line
        leaving = await ann.until(_kind("leaving", "joining", "whisper"))
        assert leaving == {"kind": "leaving", "user": {"id": 2, "name": "Ben"}}
        heard = [line["kind"] for line in ann.lines]
        assert heard.count("joining") == 1 and heard.count("leaving") == 1, heard


async def test_echo_refused_presence_and_whispers(
    pair: tuple[RunningServer, RunningServer],
) -> None:
    a, _ = pair
    async with _user(a, 3, "Cy") as console:
        console.presence = {"user_id": 3, "user_info": {"bio": "x" * 2000}}  # over 1 KB
        async with echo_listener(_config(a, console)) as echo:
            line = await echo.until(_kind("here"))
            assert line["kind"] == "error" and line["error"]["status"] == 400, line
            # A whisper on a channel it is not subscribed to: 4301.
            await echo.command({"whisper": "typing", "data": {}})
            line = await echo.until(_kind("whispered"))
            error = await echo.until(_kind())
            assert error["kind"] == "pusher_error" and error["data"]["code"] == 4301, error
