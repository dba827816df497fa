"""/echo/runs/{id}: a run followed through the real Laravel Echo and pusher-js in Chromium,
against the real server, the database, and a stand-in console's /broadcasting/auth."""

from __future__ import annotations

import filecmp
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.conftest import RunningServer, free_socket
from tests.echo_support import JS
from tests.factories import Factory
from tests.host_app import running_host
from tests.pusher_support import APP, pusher_server

from .harness import STATIC

pytestmark = pytest.mark.browser


def free_port() -> int:
    sock = free_socket()
    try:
        return int(sock.getsockname()[1])
    finally:
        sock.close()


@pytest.fixture(scope="module")
def console_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
async def ps(database_dsn: str, console_port: int) -> AsyncIterator[RunningServer]:
    """opspush with the console's origin allowed, as a deployment lists it: the page may
    then ask the console's /broadcasting/auth (the CSP's connect-src names it)."""
    port = free_port()
    origins = frozenset({f"http://127.0.0.1:{port}", f"http://127.0.0.1:{console_port}"})
    async with pusher_server(database_dsn, port=port, allowed_origins=origins) as running:
        yield running


async def test_echo_page_follows_a_run_to_its_end(
    ps: RunningServer, console_port: int, db: Factory, page: Any
) -> None:
    ws = await db.workspace()
    tenant = await db.tenant(ws)
    run = await db.run(ws, tenant, status="queued")
    async with running_host(ps, console_port) as console:
        console.allowed = {f"private-opspush.run.{run}"}
        url = f"{ps.http_url}/echo/runs/{run}#key={APP.key}&auth={console.auth_endpoint}"
        sockets: list[Any] = []
        page.on("websocket", lambda socket: sockets.append(socket))
        await page.goto(url)
        await page.wait_for_selector('[data-connection="live"]')
        await page.wait_for_selector('[data-status="queued"]')
        assert [s.url.split("?")[0] for s in sockets] == [f"ws://127.0.0.1:{ps.port}/app/{APP.key}"]
        await db.update_run(run, status="running", summary_counts={"total": 4, "processed": 1})
        await page.wait_for_selector('[data-status="running"]')
        await page.wait_for_selector('progress[value="25"]')
        await db.update_run(run, status="completed", outcome="failed")
        await page.wait_for_selector('[data-status="failed"]')
        # The run ended: the page says it is final, as /runs/{id} does, and holds no socket.
        indicator = page.locator("[data-connection]")
        await page.wait_for_selector('[data-connection="final"]')
        assert await indicator.inner_text() == "Final: no more updates"
        if not sockets[0].is_closed():
            await sockets[0].wait_for_event("close")
        assert len(sockets) == 1
    assert console.asked == [f"private-opspush.run.{run}"]


async def test_echo_page_says_when_the_host_refuses(
    ps: RunningServer, console_port: int, db: Factory, page: Any
) -> None:
    ws = await db.workspace()
    run = await db.run(ws, status="running")
    async with running_host(ps, console_port) as console:  # channels.php allows nothing
        await page.goto(f"{ps.http_url}/echo/runs/{run}#key={APP.key}&auth={console.auth_endpoint}")
        await page.wait_for_selector('[data-error="forbidden"]')
        await page.wait_for_selector('[data-connection="final"]')  # nothing more will come


def test_vendored_clients_are_the_locked_npm_packages() -> None:
    """static/vendor holds exactly the files of the packages tests/js pins."""
    modules = JS / "node_modules"
    if not modules.is_dir():
        pytest.skip("tests/js/node_modules is missing: run scripts/test (npm ci)")
    pairs = [
        (modules / "pusher-js/dist/web/pusher.min.js", "pusher-8.6.0.min.js"),
        (modules / "laravel-echo/dist/echo.iife.js", "laravel-echo-2.5.0.iife.js"),
    ]
    for source, vendored in pairs:
        assert filecmp.cmp(source, STATIC / "vendor" / vendored, shallow=False), vendored
