"""The Python client: a test can wait for a run instead of polling it."""

from __future__ import annotations

import asyncio

import pytest

from opspush.client import OpsPushError, connect
from tests.conftest import RunningServer
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
