"""The Python client: a test can wait for a run instead of polling it."""

from __future__ import annotations

import asyncio

import pytest

from opspush.client import Client, OpsPushError, connect
from tests.conftest import RunningServer, free_socket
from tests.factories import Factory


async def test_watch_a_run_until_it_ends(server: RunningServer, db: Factory) -> None:
    ws = await db.workspace()
    user = await db.user(ws, "owner")
    run = await db.run(ws)

    async def finish() -> None:
        await db.update_run(run, status="running")
        await db.update_run(run, status="completed", outcome="cancelled")

    async with connect(server.ws_url, server.token(user)) as client:
        assert client.user_id == user
        statuses = []
        async for state in client.watch(f"run:{run}"):
            statuses.append(state["data"]["status"])
            if len(statuses) == 1:
                changer = asyncio.create_task(finish())
        await changer
        assert statuses[0] == "queued" and statuses[-1] == "cancelled"
        assert client.ended == {f"run:{run}": "terminal"}


async def test_refusals_raise(server: RunningServer, db: Factory) -> None:
    user = await db.user()
    async with connect(server.ws_url, server.token(user)) as client:
        with pytest.raises(OpsPushError) as refused:
            async for _ in client.watch("run:1"):
                pass
        assert refused.value.code == "not_found"


async def test_leaving_the_loop_early_unsubscribes(server: RunningServer, db: Factory) -> None:
    ws, other = await db.workspace(), await db.workspace()
    user = await db.user(ws, "owner")
    await db.member(other, user, "owner")
    async with connect(server.ws_url, server.token(user)) as client:
        async for state in client.watch(f"operations:{ws}"):
            assert state["data"]["runs"] == []
            break
        # Frames are handled in order: once the next subscription answers, the
        # unsubscribe sent on leaving the loop has been handled too.
        async for _ in client.watch(f"operations:{other}"):
            (session,) = [s for s in server.service.sessions if s.user_id == user]
            assert {c.name for c in session.channels} == {f"operations:{other}"}
            break


async def test_bad_token_is_refused_at_connect(server: RunningServer) -> None:
    with pytest.raises(OpsPushError) as refused:
        async with connect(server.ws_url, "nope"):
            pass
    assert refused.value.code == 4401


async def test_one_client_watches_channel_after_channel(server: RunningServer, db: Factory) -> None:
    """The server closes a socket with 4000 when its last subscription ends; the next watch
    says hello again on a new one."""
    ws = await db.workspace()
    user = await db.user(ws, "owner")
    done = [await db.run(ws, status="completed", outcome="succeeded") for _ in range(3)]
    async with connect(server.ws_url, server.token(user)) as client:
        for run in done:  # each already terminal: its state, its end, then close 4000
            states = [state["data"]["status"] async for state in client.watch(f"run:{run}")]
            assert states == ["succeeded"]
        assert client.ended == {f"run:{run}": "terminal" for run in done}
        assert client.close_code == 4000


async def test_a_watch_begun_while_the_socket_closes_is_sent_again(
    server: RunningServer, db: Factory
) -> None:
    """The first run's state, end and close 4000 are on their way when the second watch
    subscribes: that subscription goes to a socket the server is closing."""
    ws = await db.workspace()
    user = await db.user(ws, "owner")
    first = await db.run(ws, status="completed", outcome="failed")
    second = await db.run(ws, status="completed", outcome="failed")
    async with connect(server.ws_url, server.token(user)) as client:
        inner: list[str] = []
        async for _ in client.watch(f"run:{first}"):
            inner += [state["data"]["status"] async for state in client.watch(f"run:{second}")]
        assert inner == ["failed"]
        assert set(client.ended.values()) == {"terminal"} and len(client.ended) == 2


async def test_watches_at_once_then_another(server: RunningServer, db: Factory) -> None:
    ws = await db.workspace()
    user = await db.user(ws, "owner")
    runs = [await db.run(ws) for _ in range(3)]

    async def follow(client: Client, run: int) -> list[str]:
        statuses = []
        async for state in client.watch(f"run:{run}"):
            statuses.append(state["data"]["status"])
            if len(statuses) == 1:
                await db.update_run(run, status="completed", outcome="succeeded")
        return statuses

    async with connect(server.ws_url, server.token(user)) as client:
        together = await asyncio.gather(*(follow(client, run) for run in runs[:2]))
        assert together == [["queued", "succeeded"]] * 2
        assert await follow(client, runs[2]) == ["queued", "succeeded"]


async def test_watching_a_channel_twice_at_once_is_refused(
    server: RunningServer, db: Factory
) -> None:
    ws = await db.workspace()
    user = await db.user(ws, "owner")
    async with connect(server.ws_url, server.token(user)) as client:
        async with asyncio.timeout(10):
            async for _ in client.watch(f"operations:{ws}"):
                with pytest.raises(OpsPushError) as refused:
                    async for _ in client.watch(f"operations:{ws}"):
                        pass
                assert refused.value.code == "already_watched"
                break


async def test_failures_are_opspush_errors(server: RunningServer, db: Factory) -> None:
    with free_socket() as closed:  # bound, never listening: the connection is refused
        url = f"ws://127.0.0.1:{closed.getsockname()[1]}/ws"
        with pytest.raises(OpsPushError) as unreachable:
            async with connect(url, "token"):
                pass
    assert unreachable.value.code == "unreachable"
    ws = await db.workspace()
    user = await db.user(ws, "owner")
    with pytest.raises(OpsPushError) as foreign:
        async with connect(server.ws_url, server.token(user), origin="https://elsewhere.example"):
            pass
    assert foreign.value.code == 403
    async with connect(server.ws_url, server.token(user)) as client:
        with pytest.raises(OpsPushError) as closed_under_it:
            async for _ in client.watch(f"operations:{ws}"):
                server.service.terminate_user(user)  # the host ends the user's sockets: 4401
        assert closed_under_it.value.code == 4401
    with pytest.raises(OpsPushError) as after_exit:
        async for _ in client.watch(f"operations:{ws}"):
            pass
    assert after_exit.value.code == "closed"
