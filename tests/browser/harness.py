"""Helpers for the browser tests: launching Debian's Chromium, serving `static/` without a
server, and a scripted stand-in for the `/ws` endpoint (Playwright's WebSocket routing)."""

from __future__ import annotations

import asyncio
import json
import os
import re
from pathlib import Path
from typing import Any

from opspush.web.headers import security_headers

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
]
STATIC = Path(__file__).resolve().parents[2] / "static"
# The committed screenshots are refreshed with OPSPUSH_UPDATE_SCREENSHOTS=1; otherwise the
# tests keep theirs in build/ (ignored), so a test run leaves the work tree clean.
_ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = _ROOT / (
    "docs/screenshots" if os.environ.get("OPSPUSH_UPDATE_SCREENSHOTS") else "build/screenshots"
)

# An origin that never reaches the network: every request to it is answered by `serve_static`.
FAKE_HOST = "opspush.test"
FAKE_ORIGIN = f"http://{FAKE_HOST}"

_PAGES = {"/runs/": "run.html", "/tenants/": "review-pack.html", "/wall/": "wall.html"}
_TYPES = {".js": "text/javascript", ".css": "text/css", ".html": "text/html"}

# Emulate the Page Visibility API (headless Chromium never hides a page on its own).
SET_VISIBILITY_JS = """(state) => {
  Object.defineProperty(document, "visibilityState", {configurable: true, get: () => state});
  Object.defineProperty(document, "hidden", {configurable: true, get: () => state === "hidden"});
  document.dispatchEvent(new Event("visibilitychange"));
}"""


async def serve_static(route: Any) -> None:
    """Answer a request to FAKE_ORIGIN the way the service routes its pages."""
    path = re.sub(r"^https?://[^/]+", "", route.request.url).split("#")[0].split("?")[0]
    file = None
    if path.startswith("/static/"):
        candidate = (STATIC / path.removeprefix("/static/")).resolve()
        if candidate.is_relative_to(STATIC) and candidate.is_file():
            file = candidate
    elif path == "/blank":
        await route.fulfill(
            status=200,
            body="<!doctype html><title>blank</title>",
            headers={"content-type": "text/html", **security_headers(FAKE_HOST, "'none'")},
        )
        return
    elif path == "/inline-script":  # what the policy must refuse (test_csp_is_enforced)
        await route.fulfill(
            status=200,
            body="<!doctype html><title>inline</title><script>window.inlineRan = true</script>",
            headers={"content-type": "text/html", **security_headers(FAKE_HOST, "'none'")},
        )
        return
    else:
        file = next(
            (STATIC / page for prefix, page in _PAGES.items() if path.startswith(prefix)), None
        )
    if file is None:
        await route.fulfill(status=404, body="not found")
        return
    await route.fulfill(
        status=200,
        body=file.read_bytes(),
        headers={
            "content-type": _TYPES.get(file.suffix, "application/octet-stream"),
            **security_headers(FAKE_HOST, "'none'"),  # as the service sends them
        },
    )


class FakeSocket:
    """One browser connection to the fake `/ws`: frames the page sent, and ways to answer."""

    def __init__(self, route: Any) -> None:
        self.route = route
        self.frames: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        route.on_message(lambda raw: self.frames.put_nowait(json.loads(raw)))

    async def recv(self, timeout: float = 5) -> dict[str, Any]:
        return await asyncio.wait_for(self.frames.get(), timeout)

    def send(self, **frame: Any) -> None:
        self.route.send(json.dumps(frame))

    async def close(self, code: int) -> None:
        await self.route.close(code=code, reason="test")

    async def handshake(self, user_id: int = 1) -> dict[str, Any]:
        hello = await self.recv()
        assert hello["op"] == "hello", hello
        self.send(type="welcome", user_id=user_id, expires_at="2099-01-01T00:00:00+00:00")
        return hello


class FakeServer:
    """Collects the connections the page opens to any `/ws` URL."""

    def __init__(self) -> None:
        self.sockets: asyncio.Queue[FakeSocket] = asyncio.Queue()
        self.count = 0

    def handler(self, route: Any) -> None:
        self.count += 1
        self.sockets.put_nowait(FakeSocket(route))

    async def accept(self, timeout: float = 5) -> FakeSocket:
        return await asyncio.wait_for(self.sockets.get(), timeout)

    async def install(self, page: Any) -> FakeServer:
        await page.route(f"{FAKE_ORIGIN}/**", serve_static)
        await page.route_web_socket(re.compile(r".*/ws$"), self.handler)
        return self
