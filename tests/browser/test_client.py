"""The rules of static/opspush.js, in Chromium against a scripted stand-in for `/ws`.

These need no database or server: Playwright answers the page's requests from `static/` and
plays the server's side of the WebSocket, so every close code can be exercised exactly.
"""

from __future__ import annotations

from typing import Any

import pytest

from .harness import FAKE_ORIGIN, SET_VISIBILITY_JS, FakeServer

pytestmark = pytest.mark.browser

# Builds a client with a fast backoff and records everything it reports in window.log.
START_CLIENT_JS = """async ({channels, refresh}) => {
  const { OpsPush } = await import("/static/opspush.js");
  window.log = [];
  window.client = new OpsPush({
    token: "t1",
    backoffBase: 20,
    backoffMax: 100,
    refreshToken: refresh ? async () => { log.push("refresh"); return "t2"; } : undefined,
    onConnection: (state) => log.push("conn:" + state),
  });
  window.subs = {};
  for (const ch of channels) {
    subs[ch] = client.subscribe(ch, {
      onState: (data) => log.push(`${ch}=${data.v}`),
      onEnd: (reason) => log.push(`${ch}:end:${reason}`),
      onError: (code) => log.push(`${ch}:error:${code}`),
    });
  }
}"""


async def start(page: Any, *channels: str, refresh: bool = False) -> FakeServer:
    server = await FakeServer().install(page)
    await page.goto(f"{FAKE_ORIGIN}/blank")
    await page.evaluate(START_CLIENT_JS, {"channels": list(channels), "refresh": refresh})
    return server


async def logged(page: Any, entry: str) -> None:
    await page.wait_for_function("(e) => window.log.includes(e)", arg=entry)


async def subscribed(sock: Any, count: int) -> set[str]:
    chans = set()
    for _ in range(count):
        frame = await sock.recv()
        assert frame["op"] == "subscribe", frame
        chans.add(frame["ch"])
    return chans


async def test_shared_socket_resubscribes_only_live_subscriptions_after_restart(page: Any) -> None:
    server = await start(page, "run:1", "run:2", "operations:3")
    sock = await server.accept()
    assert (await sock.handshake())["token"] == "t1"
    assert await subscribed(sock, 3) == {"run:1", "run:2", "operations:3"}
    sock.send(type="state", ch="run:1", data={"v": 1}, interval=1)
    sock.send(type="state", ch="run:2", data={"v": "done"}, interval=None)
    sock.send(type="end", ch="run:2", reason="terminal")
    await logged(page, "run:2:end:terminal")

    await sock.close(1012)  # the server restarts
    await logged(page, "conn:reconnecting")
    sock2 = await server.accept()
    await sock2.handshake()
    # The ended run is not watched again; the others are, on one new socket.
    assert await subscribed(sock2, 2) == {"run:1", "operations:3"}
    await logged(page, "conn:live")
    sock2.send(type="state", ch="run:1", data={"v": 2}, interval=1)
    await logged(page, "run:1=2")
    assert server.count == 2


async def test_last_end_is_final_and_nothing_reconnects(page: Any) -> None:
    server = await start(page, "run:7")
    sock = await server.accept()
    await sock.handshake()
    await subscribed(sock, 1)
    sock.send(type="state", ch="run:7", data={"v": "succeeded"}, interval=None)
    sock.send(type="end", ch="run:7", reason="terminal")
    await sock.close(4000)
    await logged(page, "conn:final")
    state = await page.evaluate("({ws: client.ws, timer: client.timer, conn: client.connection})")
    assert state == {"ws": None, "timer": None, "conn": "final"}
    assert server.count == 1


async def test_close_4000_with_unended_subscription_does_not_reconnect(page: Any) -> None:
    server = await start(page, "run:8")
    sock = await server.accept()
    await sock.handshake()
    await subscribed(sock, 1)
    await sock.close(4000)
    await logged(page, "conn:final")
    assert await page.evaluate("client.timer") is None
    assert server.count == 1


async def test_4401_calls_the_refresh_hook_and_reconnects_with_the_new_token(page: Any) -> None:
    server = await start(page, "review-pack:5", refresh=True)
    sock = await server.accept()
    await sock.handshake()
    await subscribed(sock, 1)
    await sock.close(4401)  # the token expired
    await logged(page, "refresh")
    sock2 = await server.accept()
    assert (await sock2.handshake())["token"] == "t2"
    assert await subscribed(sock2, 1) == {"review-pack:5"}


async def test_4401_without_a_refresh_hook_is_final(page: Any) -> None:
    server = await start(page, "run:9")
    sock = await server.accept()
    await sock.recv()  # hello, never welcomed
    await sock.close(4401)
    await logged(page, "conn:final")
    assert server.count == 1


async def test_refusal_ends_the_subscription(page: Any) -> None:
    server = await start(page, "run:404")
    sock = await server.accept()
    await sock.handshake()
    await subscribed(sock, 1)
    sock.send(type="error", ch="run:404", code="not_found", message="no such run")
    await logged(page, "run:404:end:error")
    assert await page.evaluate("window.log.indexOf('run:404:error:not_found') >= 0")
    await logged(page, "conn:final")


async def test_hidden_tab_and_modal_pause_until_both_are_gone(page: Any) -> None:
    server = await start(page, "run:1")
    sock = await server.accept()
    await sock.handshake()
    await subscribed(sock, 1)

    await page.evaluate(SET_VISIBILITY_JS, "hidden")
    assert await sock.recv() == {"op": "pause", "reason": "hidden"}
    await page.evaluate("client.pause('modal')")  # already paused: nothing new is sent
    await page.evaluate(SET_VISIBILITY_JS, "visible")  # the modal still holds the pause
    await page.evaluate("client.subscribe('run:2')")  # a new channel joins paused
    assert await sock.recv() == {"op": "subscribe", "ch": "run:2"}
    assert await sock.recv() == {"op": "pause", "ch": "run:2", "reason": "modal"}
    await page.evaluate("client.resume()")
    assert await sock.recv() == {"op": "resume"}


async def test_modal_pause_survives_a_reconnect(page: Any) -> None:
    server = await start(page, "operations:3")
    sock = await server.accept()
    await sock.handshake()
    await subscribed(sock, 1)
    await page.evaluate("client.pause('modal')")
    assert await sock.recv() == {"op": "pause", "reason": "modal"}
    await sock.close(1011)  # an unexpected server error
    sock2 = await server.accept()
    await sock2.handshake()
    assert await subscribed(sock2, 1) == {"operations:3"}
    assert await sock2.recv() == {"op": "pause", "reason": "modal"}


async def test_hidden_page_reconnects_only_when_shown_again(page: Any) -> None:
    server = await start(page, "run:1")
    sock = await server.accept()
    await sock.handshake()
    await subscribed(sock, 1)
    await page.evaluate(SET_VISIBILITY_JS, "hidden")
    assert (await sock.recv())["op"] == "pause"
    await sock.close(1012)
    await page.wait_for_function(
        "() => client.deferred === true"
    )  # the backoff ran out, still hidden
    assert server.count == 1
    await page.evaluate(SET_VISIBILITY_JS, "visible")
    sock2 = await server.accept()
    await sock2.handshake()
    assert await subscribed(sock2, 1) == {"run:1"}
    await logged(page, "conn:live")


async def test_unsubscribing_the_last_channel_closes_the_socket(page: Any) -> None:
    server = await start(page, "run:1")
    sock = await server.accept()
    await sock.handshake()
    await subscribed(sock, 1)
    await page.evaluate("subs['run:1'].unsubscribe()")
    assert await sock.recv() == {"op": "unsubscribe", "ch": "run:1"}
    await logged(page, "conn:final")
    assert server.count == 1


async def test_backoff_is_full_jitter_doubling_to_20_seconds(page: Any) -> None:
    await FakeServer().install(page)
    await page.goto(f"{FAKE_ORIGIN}/blank")
    ceilings = await page.evaluate(
        """async () => {
          const { backoffDelay } = await import("/static/opspush.js");
          return [...Array(9).keys()].map((n) => [backoffDelay(n, 500, 20000, () => 0),
                                                  backoffDelay(n, 500, 20000, () => 0.9999999)]);
        }"""
    )
    assert [low for low, _ in ceilings] == [0] * 9
    assert [high + 1 for _, high in ceilings] == [
        500,
        1000,
        2000,
        4000,
        8000,
        16000,
        20000,
        20000,
        20000,
    ]


async def test_page_without_token_says_so(page: Any) -> None:
    await FakeServer().install(page)
    await page.goto(f"{FAKE_ORIGIN}/runs/42")
    await page.wait_for_selector('[data-connection="final"]')
    assert "token" in (await page.locator('[role="alert"]').inner_text())


async def test_run_page_announces_the_finish_and_ends_final(page: Any) -> None:
    server = await FakeServer().install(page)
    await page.goto(f"{FAKE_ORIGIN}/runs/42#token=abc")
    sock = await server.accept()
    await sock.handshake()
    assert await subscribed(sock, 1) == {"run:42"}
    run = {
        "id": 42,
        "workspace_id": 1,
        "tenant_id": None,
        "type": "inventory.sync",
        "status": "running",
        "raw_status": "running",
        "outcome": "pending",
        "summary_counts": {"total": 10, "processed": 4},
        "progress": 0.4,
        "failure_summary": [],
        "created_at": "2024-01-01T00:00:00Z",
        "started_at": "2024-01-01T00:00:01Z",
        "completed_at": None,
    }
    sock.send(type="state", ch="run:42", data=run, interval=1)
    await page.wait_for_selector('[data-status="running"]')
    assert await page.locator("progress").get_attribute("value") == "40"
    done = {
        **run,
        "status": "succeeded",
        "raw_status": "completed",
        "outcome": "succeeded",
        "completed_at": "2024-01-01T00:00:09Z",
    }
    sock.send(type="state", ch="run:42", data=done, interval=None)
    sock.send(type="end", ch="run:42", reason="terminal")
    await page.wait_for_selector('[data-status="succeeded"]')
    await page.wait_for_selector('[data-connection="final"]')
    announced = "document.querySelector('.run-viewer [aria-live]').textContent"
    await page.wait_for_function(f"() => {announced}.includes('finished: Succeeded')")
    assert await page.locator("time[title]").count() >= 3


async def test_csp_is_enforced_and_violations_are_seen(page: Any) -> None:
    """The policy refuses inline code, and the fixture sees it: a violation fails a test."""
    await FakeServer().install(page)
    await page.goto(f"{FAKE_ORIGIN}/inline-script")
    await page.wait_for_function("() => document.readyState === 'complete'")
    assert await page.evaluate("window.inlineRan === undefined")
    violations: list[str] = page.csp_violations
    await page.wait_for_function("() => true")  # console events of the load have arrived
    assert any("script-src" in v or "default-src" in v for v in violations), violations
    violations.clear()  # expected here; anywhere else it fails the test


async def test_page_drops_the_token_from_the_address_and_history(page: Any) -> None:
    server = await FakeServer().install(page)
    await page.goto(f"{FAKE_ORIGIN}/runs/42#token=secret-token-value&view=compact")
    sock = await server.accept()
    hello = await sock.handshake()
    assert hello["token"] == "secret-token-value"
    assert await page.evaluate("location.href") == f"{FAKE_ORIGIN}/runs/42#view=compact"
    entries = await page.evaluate("history.length")
    # The client keeps it in memory: a reconnect says hello with it again.
    await sock.close(1012)
    again = await (await server.accept(timeout=10)).recv()
    assert again == {"op": "hello", "token": "secret-token-value"}
    assert await page.evaluate("history.length") == entries  # replaced, not pushed
    # The history entry itself holds no token: back and forward again, the page has none.
    await page.goto(f"{FAKE_ORIGIN}/wall/3#token=other-token")
    await server.accept()
    assert await page.evaluate("location.href") == f"{FAKE_ORIGIN}/wall/3"
    await page.go_back()
    assert await page.evaluate("location.href") == f"{FAKE_ORIGIN}/runs/42#view=compact"
    await page.wait_for_selector('[role="alert"]')  # "No access token"
