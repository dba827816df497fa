"""The real clients: Laravel Echo over pusher-js under Node, against a real opspush and a
stand-in console whose /broadcasting/auth is signed by Pusher's own Python library."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.conftest import RunningServer
from tests.echo_support import echo_listener, require_echo
from tests.factories import Factory
from tests.host_app import running_host
from tests.pusher_support import APP, host, pusher_server


@pytest.fixture(scope="module")
async def ps(database_dsn: str) -> AsyncIterator[RunningServer]:
    require_echo()
    async with pusher_server(database_dsn) as running:
        yield running


def _config(server: RunningServer, auth: Any, run_id: int, **extra: Any) -> dict[str, Any]:
    return {
        "port": server.port,
        "key": APP.key,
        "authEndpoint": auth.auth_endpoint,
        "userAuthEndpoint": auth.user_auth_endpoint,
        "runId": run_id,
        **extra,
    }


def _connected(line: dict[str, Any]) -> bool:
    return line == {**line, "kind": "connection", "state": "connected"}


async def test_echo_receives_a_run_from_queued_to_its_end(ps: RunningServer, db: Factory) -> None:
    ws = await db.workspace()
    tenant = await db.tenant(ws)
    run = await db.run(ws, tenant, summary_counts={"total": 2, "processed": 0})
    async with running_host(ps) as console:
        console.allowed = {f"private-opspush.run.{run}"}
        async with echo_listener(_config(ps, console, run, exitOnEnd=True)) as echo:
            first = await echo.until(lambda line: line["kind"] in ("event", "error"))
            assert first["event"] == "opspush.state", first
            assert first["payload"]["data"]["status"] == "queued"
            for columns in (
                {"status": "running"},
                {"summary_counts": {"total": 2, "processed": 1}},
                {"status": "completed", "outcome": "succeeded",
                 "summary_counts": {"total": 2, "processed": 2}},
            ):  # fmt: skip
                await db.update_run(run, **columns)
                await echo.until(lambda line: line["kind"] == "event")
            end = await echo.until(lambda line: line["kind"] == "event")
            assert end == {
                "kind": "event",
                "event": "opspush.end",
                "payload": {"reason": "terminal"},
            }
            events = [line for line in echo.lines if line["kind"] == "event"]
    assert console.asked == [f"private-opspush.run.{run}"]
    seen = [(e["event"], e["payload"].get("data", {}).get("progress")) for e in events]
    assert seen == [
        ("opspush.state", 0),
        ("opspush.state", 0),
        ("opspush.state", 0.5),
        ("opspush.state", 1),
        ("opspush.end", None),
    ]
    assert [e["payload"].get("interval") is None for e in events[:4]] == [False] * 3 + [True]
    # For the closing note: exactly what Echo's listeners received.
    print("\nEcho's listener received, from queued to end:")
    for event in events:
        print(json.dumps({"event": event["event"], "payload": event["payload"]}))


async def test_echo_refused_by_channels_php_and_the_hosts_own_broadcast(
    ps: RunningServer, db: Factory
) -> None:
    ws = await db.workspace()
    run = await db.run(ws, status="running")
    async with running_host(ps) as console:
        console.allowed = {"private-orders.7"}  # not the run: channels.php said no
        config = _config(ps, console, run, hostChannel="orders.7")
        async with echo_listener(config) as echo:
            error = await echo.until(lambda line: line["kind"] == "error")
            assert error["error"]["status"] == 403  # from the host's /broadcasting/auth
            await echo.until(lambda line: line["kind"] == "subscribed")
            client = host(ps)
            await asyncio.to_thread(client.trigger, "private-orders.7", "OrderShipped", {"id": 7})
            shipped = await echo.until(lambda line: line["kind"] == "event")
            assert shipped == {"kind": "event", "event": "OrderShipped", "payload": {"id": 7}}


async def test_signed_in_echo_gets_404_for_a_run_out_of_scope(
    ps: RunningServer, db: Factory
) -> None:
    ws = await db.workspace()
    tenant = await db.tenant(ws)
    user = await db.user(ws, "operator")  # a member, but not entitled to the tenant
    run = await db.run(ws, tenant, status="running")
    async with running_host(ps) as console:
        console.allowed = {f"private-opspush.run.{run}"}  # the host's check passed anyway
        console.user_id = user
        async with echo_listener(_config(ps, console, run, signIn=True)) as echo:
            error = await echo.until(lambda line: line["kind"] == "error")
            assert error["error"]["status"] == 404


async def test_signed_in_echo_hears_send_to_user(ps: RunningServer, db: Factory) -> None:
    """pusher-js subscribes `#server-to-user-<id>` after the sign-in; `user.bind` hears the
    host's `send_to_user` (Pusher's own Python library)."""
    ws = await db.workspace()
    user = await db.user(ws, "operator")
    run = await db.run(ws, status="running")
    async with running_host(ps) as console:
        console.user_id = user
        config = _config(ps, console, run, signIn=True, userEvent="Notice")
        async with echo_listener(config) as echo:
            subscribed = await echo.until(lambda line: line["kind"] == "subscribed")
            assert subscribed["channel"] == f"#server-to-user-{user}"
            await asyncio.to_thread(host(ps).send_to_user, str(user), "Notice", {"n": 1})
            notice = await echo.until(lambda line: line.get("event") == "Notice")
            assert notice["payload"] == {"n": 1}
