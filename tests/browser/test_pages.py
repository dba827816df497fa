"""The three pages in headless Chromium against the real server and PostgreSQL.

The database rows change the way the host application changes them; the pages must follow.
Tests that need time to pass use the server with a manual clock, so that crossing an interval
costs no waiting; screenshots of the pages are kept in docs/screenshots/.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from opspush.core.channels import Channel, Kind
from opspush.core.clock import ManualClock
from tests.conftest import RunningServer, running_server, step
from tests.factories import Factory

from .harness import SCREENSHOTS, SET_VISIBILITY_JS

pytestmark = pytest.mark.browser

FAILURES = [
    {"code": "graph.throttled", "message": "Microsoft Graph throttled the request", "count": 3},
    {"code": "policy.invalid", "message": "Conditional access policy could not be parsed"},
]


def page_url(server: RunningServer, path: str, user_id: int) -> str:
    return f"{server.http_url}{path}#token={server.token(user_id)}"


async def open_page(page: Any, url: str) -> list[Any]:
    """Open a page; returns the list of WebSockets it opens (filled as they open)."""
    sockets: list[Any] = []
    page.on("websocket", lambda ws: sockets.append(ws))
    await page.goto(url)
    await page.wait_for_selector('[data-connection="live"]')
    return sockets


async def server_caught_up(page: Any, ws: Any) -> None:
    """Wait until the server has handled every frame the page sent so far: frames are handled
    in order, and an unknown op is answered with an error frame."""
    async with ws.expect_event("framereceived", predicate=lambda p: "unknown `op`" in str(p)):
        await page.evaluate("window.opspush.ws.send(JSON.stringify({op: 'sync'}))")


async def screenshot(page: Any, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SCREENSHOTS / name), full_page=True)


async def test_run_page_follows_a_run_to_succeeded_then_has_no_socket(
    server: RunningServer, db: Factory, page: Any
) -> None:
    ws = await db.workspace("Woodgrove Operations")
    tenant = await db.tenant(ws, "Fabrikam")
    user = await db.user(ws, "readonly", tenants=[tenant])
    run = await db.run(ws, tenant, status="queued")
    sockets = await open_page(page, page_url(server, f"/runs/{run}", user))
    await page.wait_for_selector('[data-status="queued"]')
    # The token was read, then dropped from the address bar and the history entry.
    assert await page.evaluate("location.href") == f"{server.http_url}/runs/{run}"
    assert await page.locator("progress:not([value])").count() == 1  # nothing known yet

    await db.update_run(
        run,
        status="running",
        started_at=datetime.now(UTC),
        summary_counts={"total": 250, "processed": 100, "succeeded": 96, "failed": 4},
        failure_summary=FAILURES,
    )
    await page.wait_for_selector('[data-status="running"]')
    await page.wait_for_selector('progress[value="40"]')
    assert "graph.throttled" in await page.locator(".failure-list").inner_text()
    facts = await page.locator(".facts").inner_text()
    assert "Fabrikam" in facts and "Woodgrove Operations" in facts  # names, not ids
    await screenshot(page, "run.png")

    await db.update_run(
        run,
        status="completed",
        outcome="succeeded",
        completed_at=datetime.now(UTC),
        summary_counts={"total": 250, "processed": 250, "succeeded": 246, "failed": 4},
    )
    await page.wait_for_selector('[data-status="succeeded"]')
    await page.wait_for_selector('[data-connection="final"]')
    live = page.locator(".run-viewer [aria-live]")
    await page.wait_for_function(
        "(el) => el.textContent.includes('finished: Succeeded')", arg=await live.element_handle()
    )
    # The subscription ended: the socket is closed and nothing reconnects.
    assert len(sockets) == 1
    if not sockets[0].is_closed():
        await sockets[0].wait_for_event("close")
    assert await page.evaluate("window.opspush.ws === null && window.opspush.timer === null")
    times = page.locator("time[data-relative]")
    assert await times.count() == 3  # created, started, completed: relative, exact in title
    assert await times.first.get_attribute("title")


async def test_hidden_tab_pauses_reads_and_showing_it_brings_the_current_state(
    manual: RunningServer, clock: ManualClock, db: Factory, page: Any
) -> None:
    ws = await db.workspace()
    user = await db.user(ws, "owner")
    run = await db.run(
        ws, status="running", created_at=clock.now(), summary_counts={"total": 10, "processed": 2}
    )
    sockets = await open_page(page, page_url(manual, f"/runs/{run}", user))
    await page.wait_for_selector('progress[value="20"]')

    await page.evaluate(SET_VISIBILITY_JS, "hidden")
    await server_caught_up(page, sockets[0])
    watch = manual.engine.watches[Channel(Kind.RUN, run)]
    assert watch.active == 0
    stats = manual.service.stats
    reads = stats.channel_reads[Kind.RUN]
    await db.update_run(run, summary_counts={"total": 10, "processed": 7})
    for _ in range(15):  # fifteen 1 s intervals go by
        await step(manual, clock, 1.0)
    assert stats.channel_reads[Kind.RUN] == reads  # no reads on the hidden page's behalf
    assert await page.locator("progress").get_attribute("value") == "20"

    await page.evaluate(SET_VISIBILITY_JS, "visible")
    await page.wait_for_selector('progress[value="70"]')  # the current state, at once
    assert stats.channel_reads[Kind.RUN] == reads + 1


async def test_wall_reconnects_after_a_server_restart_and_catches_up(
    database_dsn: str, db: Factory, page: Any
) -> None:
    ws = await db.workspace()
    user = await db.user(ws, "owner")
    first = await db.run(ws, status="running", summary_counts={"total": 4, "processed": 1})
    async with running_server(database_dsn) as running:
        port = running.port  # the restarted server comes back on the same port
        await open_page(page, page_url(running, f"/wall/{ws}", user))
        await page.wait_for_selector(f'[data-list="active"] [data-run-id="{first}"]')
    await page.wait_for_selector('[data-connection="reconnecting"]')  # 1012: restarting
    # No longer live: the data is greyed and a notice says since when.
    await page.wait_for_selector("#app[data-stale]")
    assert "Not live since" in await page.inner_text(".stale-notice")

    second = await db.run(ws, status="queued")  # created while the server is down
    async with running_server(database_dsn, port=port):
        await page.wait_for_selector('[data-connection="live"]', timeout=30_000)
        await page.wait_for_selector("#app:not([data-stale])")
        assert await page.locator(".stale-notice").count() == 0
        await page.wait_for_selector(f'[data-list="active"] [data-run-id="{second}"]')
        await page.wait_for_selector(f'[data-run-id="{first}"]')


async def test_pack_card_goes_from_in_progress_to_ready(
    manual: RunningServer, clock: ManualClock, db: Factory, page: Any
) -> None:
    ws = await db.workspace()
    tenant = await db.tenant(ws, "Contoso")
    user = await db.user(ws, "readonly", tenants=[tenant])
    await db.pack(ws, tenant, status="expired")  # an older pack: the card shows the latest
    pack = await db.pack(ws, tenant, status="queued")
    await open_page(page, page_url(manual, f"/tenants/{tenant}/review-pack", user))
    await page.wait_for_selector('[data-pack-status="queued"]')
    assert "In progress" in await page.locator(".pack-card").inner_text()
    # The page is headed by the tenant's name, not its id.
    await page.wait_for_selector('#tenant-title:text-is("Contoso")')
    assert await page.title() == "Contoso · Review pack · opspush"

    await db.update_pack(pack, status="generating")
    await step(manual, clock, 10.0)
    await page.wait_for_selector('[data-pack-status="generating"]')
    assert "In progress" in await page.locator(".pack-card").inner_text()

    now = clock.now()
    await db.update_pack(
        pack,
        status="ready",
        generated_at=now,
        expires_at=now + timedelta(days=30),
        file_size=5_432_100,
        sha256="9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
        summary={"policies": 128, "findings": 7, "tenant_name": "Contoso"},
    )
    await step(manual, clock, 10.0)
    await page.wait_for_selector('[data-pack-status="ready"]')
    await page.wait_for_selector('[data-connection="final"]')
    card = await page.locator(".pack-card").inner_text()
    assert "Ready" in card and "5.2 MB" in card and "Expires" in card
    await screenshot(page, "review-pack.png")


async def test_pack_card_without_a_pack(server: RunningServer, db: Factory, page: Any) -> None:
    ws = await db.workspace()
    tenant = await db.tenant(ws, "Northwind Traders")
    user = await db.user(ws, "owner")
    await page.goto(page_url(server, f"/tenants/{tenant}/review-pack", user))
    await page.wait_for_selector('[data-pack-status="none"]')
    await page.wait_for_selector('[data-connection="final"]')
    assert await page.locator("#tenant-title").inner_text() == "Northwind Traders"


async def test_index_page_drops_the_token_from_the_address_and_keeps_it_in_its_links(
    server: RunningServer, db: Factory, page: Any
) -> None:
    user = await db.user(await db.workspace(), "owner")
    token = server.token(user)
    await page.goto(f"{server.http_url}/#token={token}")
    await page.wait_for_function("location.hash === ''")
    assert await page.evaluate("location.href") == f"{server.http_url}/"
    links = page.locator("a[data-page]")
    assert await links.count() == 3
    for href in await links.evaluate_all("(links) => links.map((a) => a.getAttribute('href'))"):
        assert href.endswith(f"#token={token}")
    # What the address bar no longer shows, the next page still gets: the link carries it.
    await page.click('a[data-page="/runs/"]')
    await page.wait_for_selector('[data-connection="live"], [data-error]')
    assert await page.evaluate("location.href") == f"{server.http_url}/runs/1"


async def test_wall_shows_a_new_run_and_its_completion(
    manual: RunningServer, clock: ManualClock, db: Factory, page: Any
) -> None:
    await page.set_viewport_size({"width": 1920, "height": 1080})
    ws = await db.workspace("Woodgrove Operations")
    names = ("Fabrikam", "Northwind Traders", "Tailspin Toys")
    tenants = [await db.tenant(ws, name) for name in names]
    user = await db.user(ws, "owner")
    now = clock.now()
    running = await db.run(
        ws,
        tenants[0],
        status="running",
        created_at=now - timedelta(minutes=4),
        summary_counts={"total": 1000, "processed": 730, "succeeded": 730},
    )
    await db.update_run(running, started_at=now - timedelta(minutes=4))
    await db.run(ws, tenants[1], type="review_pack.generate", status="running", created_at=now)
    finished = [
        ("succeeded", 2, {"total": 500, "processed": 500, "succeeded": 500}),
        ("failed", 6, {"total": 200, "processed": 80, "failed": 80}),
        ("partially_succeeded", 9, {"total": 200, "processed": 200, "failed": 4}),
        ("succeeded", 20, {"total": 10, "processed": 10}),  # over 15 minutes ago: not shown
    ]
    old = []
    for outcome, minutes_ago, counts in finished:
        run_id = await db.run(
            ws,
            tenants[2],
            status="completed",
            outcome=outcome,
            summary_counts=counts,
            created_at=now - timedelta(minutes=30),
        )
        await db.update_run(run_id, completed_at=now - timedelta(minutes=minutes_ago))
        old.append(run_id)

    await open_page(page, page_url(manual, f"/wall/{ws}", user))
    await page.wait_for_selector(f'[data-list="active"] [data-run-id="{running}"]')
    assert await page.locator('[data-list="recent"] [data-run-id]').count() == 3
    assert await page.locator(f'[data-run-id="{old[-1]}"]').count() == 0
    await page.wait_for_selector("#clock:not(:empty)")

    new = await db.run(ws, None, type="workspace.audit", status="queued", created_at=clock.now())
    await step(manual, clock, 1.0)
    row = f'[data-list="active"] [data-run-id="{new}"]'
    await page.wait_for_selector(f'{row} [data-status="queued"]')
    # Active runs come first, the newest on top.
    ids = await page.locator('[data-list="active"] [data-run-id]').evaluate_all(
        "(rows) => rows.map((r) => Number(r.dataset.runId))"
    )
    assert ids[0] == new and running in ids
    await page.wait_for_selector('#wall-title:has-text("Woodgrove Operations")')
    await screenshot(page, "wall.png")

    await db.update_run(new, status="running", started_at=clock.now())
    await step(manual, clock, 1.0)
    await page.wait_for_selector(f'{row} [data-status="running"]')
    await db.update_run(new, status="completed", outcome="succeeded", completed_at=clock.now())
    await step(manual, clock, 1.0)
    await page.wait_for_selector(
        f'[data-list="recent"] [data-run-id="{new}"] [data-status="succeeded"]'
    )
    assert await page.locator(row).count() == 0
    await page.wait_for_function(
        "(id) => document.querySelector('.wall-main [aria-live]').textContent"
        ".includes(`Run ${id} `)",
        arg=new,
    )
    assert await page.locator('[data-connection="live"]').count() == 1  # the wall never ends
