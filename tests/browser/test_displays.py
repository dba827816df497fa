"""A wall display in headless Chromium: paired, live without a reload, through reloads and
token renewals without a blink, and back to pairing when revoked (docs/displays.md)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.conftest import RunningServer, running_server
from tests.factories import Factory

from .harness import SCREENSHOTS

pytestmark = pytest.mark.browser

TTL = 10  # seconds: a renewal every 7.5 s

# Every value the connection indicator takes, from the first paint on.
RECORD_STATES_JS = """
window.__states = [];
new MutationObserver(() => {
  const el = document.querySelector("[data-connection]");
  const state = el && el.dataset.connection;
  if (state && window.__states.at(-1) !== state) window.__states.push(state);
}).observe(document, {subtree: true, attributes: true, attributeFilter: ["data-connection"]});
"""


@pytest.fixture(scope="module")
async def short(database_dsn: str) -> AsyncIterator[RunningServer]:
    async with running_server(database_dsn, display_token_ttl=TTL) as running:
        yield running


@pytest.fixture
async def http(short: RunningServer) -> AsyncIterator[httpx.AsyncClient]:
    await short.service.pool.execute("DELETE FROM display_pairings")
    async with httpx.AsyncClient(base_url=short.http_url, timeout=10) as client:
        yield client


async def approve(
    http: httpx.AsyncClient, server: RunningServer, code: str, workspace: int, user: int
) -> int:
    response = await http.post(
        "/api/displays/approve",
        json={"code": code, "workspace_id": workspace, "name": "NOC wall"},
        headers={"Authorization": f"Bearer {server.token(user)}"},
    )
    assert response.status_code == 201, response.text
    display_id: int = response.json()["display"]["id"]
    return display_id


async def pair_page(
    page: Any, server: RunningServer, http: httpx.AsyncClient, db: Factory
) -> tuple[int, int, int, int]:
    """Open /wall, approve its code: (workspace, approver, display id, a running run's id),
    the page live."""
    workspace = await db.workspace("Contoso Operations")
    user = await db.user(workspace, "owner")
    run = await db.run(workspace, status="running")
    await page.goto(f"{server.http_url}/wall")
    code_el = await page.wait_for_selector("[data-user-code]")
    code = await code_el.get_attribute("data-user-code")
    assert code and len(code) == 9 and code[4] == "-"
    assert await page.locator(".pairing-qr svg").count() == 1
    display_id = await approve(http, server, code, workspace, user)
    await page.wait_for_selector('[data-connection="live"]', timeout=15_000)
    await page.wait_for_selector(f'[data-run-id="{run}"]')
    return workspace, user, display_id, run


async def test_pair_then_live_without_a_reload_and_through_reloads(
    short: RunningServer, http: httpx.AsyncClient, db: Factory, page: Any
) -> None:
    await page.add_init_script(RECORD_STATES_JS)
    workspace, _, display_id, run = await pair_page(page, short, http, db)
    assert "NOC wall" in await page.title() or "Contoso" in await page.title()
    stored = await page.evaluate("JSON.parse(localStorage.getItem('opspush.display'))")
    assert stored["id"] == display_id and stored["credential"].startswith("opd_")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    await page.reload()
    await page.wait_for_selector(f'[data-run-id="{run}"]')
    assert await page.locator("[data-pairing]").count() == 0  # no pairing after a reload
    # A browser restart: a new page of the same profile (localStorage is the profile's).
    again = await page.context.new_page()
    await again.goto(f"{short.http_url}/wall/{workspace}")
    await again.wait_for_selector(f'[data-run-id="{run}"]')
    await again.close()


async def test_tokens_are_renewed_on_a_second_socket_without_a_blink(
    short: RunningServer, http: httpx.AsyncClient, db: Factory, page: Any
) -> None:
    await page.add_init_script(RECORD_STATES_JS)
    sockets: list[Any] = []
    page.on("websocket", lambda ws: sockets.append(ws))
    _, _, _, run = await pair_page(page, short, http, db)
    assert len(sockets) == 1
    # Past two renewals (7.5 s each) and the first token's expiry (10 s).
    async with page.expect_websocket(timeout=15_000):
        pass
    async with page.expect_websocket(timeout=15_000):
        pass
    assert len(sockets) == 3
    await page.wait_for_function(
        "() => window.opspushDisplay.client.ws && window.opspushDisplay.client.welcomed"
    )
    await short.service.pool.execute(
        """UPDATE operation_runs SET status = 'completed', outcome = 'succeeded',
           completed_at = now() WHERE id = $1""",
        run,
    )
    await page.wait_for_selector(f'[data-list="recent"] [data-run-id="{run}"]')
    states = await page.evaluate("window.__states")
    live_from = states.index("live")
    assert states[live_from:] == ["live"], states  # never reconnecting, never signed out
    assert await page.locator(".stale-notice").count() == 0
    # Only the newest socket is open: each old one was closed by the page, not by expiry.
    assert [ws.is_closed() for ws in sockets] == [True, True, False]


async def test_revoked_the_page_signs_out_and_offers_pairing_again(
    short: RunningServer, http: httpx.AsyncClient, db: Factory, page: Any
) -> None:
    _, user, display_id, _ = await pair_page(page, short, http, db)
    response = await http.delete(
        f"/api/displays/{display_id}", headers={"Authorization": f"Bearer {short.token(user)}"}
    )
    assert response.status_code == 200
    await page.wait_for_selector("[data-signed-out]", timeout=5_000)
    await page.wait_for_selector("[data-user-code]")
    assert await page.evaluate("localStorage.getItem('opspush.display')") is None
    await page.screenshot(path=str(SCREENSHOTS / "display-pairing.png"))
