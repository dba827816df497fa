"""Hostile requests at the edge: huge ids, framing and sniffing, forged proxy headers,
secrets in debug logs, requests that never complete, `/metrics` without its token, and the
default connection limits (issue 13)."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import websockets

from opspush.core import protocol
from opspush.core.channels import MAX_ID
from tests.conftest import running_server
from tests.factories import Factory
from tests.reliability.conftest import (
    assert_no_leak,
    counts,
    server_sockets,
    wait_until,
    watch_logs,
)


async def test_ids_beyond_bigint(database_dsn: str, db: Factory, record: Any) -> None:
    user = await db.user()
    huge = [str(MAX_ID + 1), str(2**64), "9" * 30, "9" * 5000, "0"]
    paths = [
        path
        for ident in huge
        for path in (
            f"/api/runs/{ident}",
            f"/api/tenants/{ident}/review-pack",
            f"/runs/{ident}",
            f"/tenants/{ident}/review-pack",
            f"/wall/{ident}",
        )
    ]
    async with running_server(database_dsn) as server:
        headers = {"Authorization": f"Bearer {server.token(user)}"}
        with watch_logs() as logs:
            async with httpx.AsyncClient(base_url=server.http_url, headers=headers) as http:
                missing = await http.get(f"/api/runs/{MAX_ID}")
                statuses = {path: (await http.get(path)) for path in paths}
            logs.assert_clean()
    assert missing.status_code == 404
    for path, response in statuses.items():
        assert response.status_code == 404, (path[:40], response.status_code)
        if path.startswith("/api/"):
            assert response.content == missing.content  # the same answer as a missing id
    record(
        "hostile",
        "HTTP ids past PostgreSQL's bigint (2^63, 2^64, 30 and 5,000 digits) and 0, on the API "
        "and the page routes",
        len(paths),
        "404 before any query (on the API, byte-identical to a missing id); no 500, no ERROR log",
    )


async def test_pages_and_static_files_send_security_headers(database_dsn: str, record: Any) -> None:
    paths = [
        "/runs/1",
        "/tenants/1/review-pack",
        "/wall/1",
        "/static/opspush.js",
        "/static/opspush.css",
        "/static/run.html",
        "/static/missing.js",
        "/api/runs/1",
        "/healthz",
    ]
    async with (
        running_server(database_dsn, frame_ancestors="https://console.example") as server,
        httpx.AsyncClient(base_url=server.http_url) as http,
    ):
        responses = {path: await http.get(path) for path in paths}
    host = f"127.0.0.1:{server.port}"
    for path, response in responses.items():
        policy = response.headers.get("content-security-policy", "")
        directives = dict(d.split(" ", 1) for d in policy.split("; ") if d)
        assert directives.get("default-src") == "'self'", path
        assert directives.get("connect-src") == f"'self' ws://{host} wss://{host}", path
        assert directives.get("frame-ancestors") == "https://console.example", path
        assert response.headers.get("x-content-type-options") == "nosniff", path
        assert response.headers.get("referrer-policy") == "no-referrer", path
    record(
        "hostile",
        "pages, static files, the API and health: framing, sniffing, referrers",
        len(paths),
        "every response has a CSP (`default-src 'self'`, `connect-src` its own ws/wss, "
        "`frame-ancestors` from `OPSPUSH_FRAME_ANCESTORS`), `nosniff`, `no-referrer`",
    )


async def _address_of(server: Any, user: int, xff: str | None) -> str:
    """The address the server counts a socket under, for a handshake with this XFF."""
    headers = {} if xff is None else {"X-Forwarded-For": xff}
    before = set(server.service.per_address)
    ws = await websockets.connect(server.ws_url, additional_headers=headers)
    try:
        await ws.send(json.dumps({"op": "hello", "token": server.token(user)}))
        assert json.loads(await ws.recv())["type"] == "welcome"
        added = set(server.service.per_address) - before
        assert len(added) == 1, (before, added)
        return added.pop()
    finally:
        await ws.close()
        await wait_until(lambda: set(server.service.per_address) <= before, 10, "released")


async def test_forged_forwarded_for(database_dsn: str, db: Factory, record: Any) -> None:
    user = await db.user()
    forged = "6.6.6.6, 198.51.100.7"
    seen: dict[str, str] = {}
    tries = 0
    loopback = (ipaddress.ip_network("127.0.0.1"),)
    elsewhere = (ipaddress.ip_network("10.0.0.0/8"),)
    # Trusting nobody (the default) or a proxy that is not the peer: XFF is ignored.
    for name, trusted in (("no proxy trusted", ()), ("peer not a trusted proxy", elsewhere)):
        async with running_server(
            database_dsn, trusted_proxies=trusted, max_connections_per_address=2
        ) as server:
            seen[name] = await _address_of(server, user, forged)
            tries += 1
            # Fresh forged addresses do not escape the per-address limit.
            opened = [
                await websockets.connect(
                    server.ws_url, additional_headers={"X-Forwarded-For": f"203.0.113.{i}"}
                )
                for i in range(3)
            ]
            for ws in opened:
                with contextlib.suppress(websockets.ConnectionClosed):  # refused at once
                    await ws.send(json.dumps({"op": "hello", "token": server.token(user)}))
            closes = []
            for ws in opened:
                with contextlib.suppress(websockets.ConnectionClosed):
                    async with asyncio.timeout(10):
                        while True:
                            frame = json.loads(await ws.recv())
                            if frame["type"] == "welcome":
                                break
                closes.append(ws.close_code)
                await ws.close()
            assert closes.count(protocol.CLOSE_TOO_MANY) == 1, closes
            tries += 3
    # Behind a trusted proxy (loopback here): the rightmost hop it did not append.
    async with running_server(database_dsn, trusted_proxies=loopback) as server:
        seen["behind a trusted proxy"] = await _address_of(server, user, forged)
        seen["trusted proxy, no XFF"] = await _address_of(server, user, None)
        tries += 2
    assert seen == {
        "no proxy trusted": "127.0.0.1",
        "peer not a trusted proxy": "127.0.0.1",
        "behind a trusted proxy": "198.51.100.7",
        "trusted proxy, no XFF": "127.0.0.1",
    }, seen
    record(
        "hostile",
        "forged `X-Forwarded-For` (`6.6.6.6, 198.51.100.7`), and a new forged address per "
        "socket against the per-address limit",
        tries,
        "ignored unless the peer is in `OPSPUSH_TRUST_PROXY`; behind it, the rightmost "
        "address it did not append counts; forged addresses do not escape the limit (4429)",
    )


@contextlib.contextmanager
def capture_everything() -> Iterator[list[logging.LogRecord]]:
    """Every record at every level, on the root and on uvicorn's own (non-propagating) tree."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep(level=logging.DEBUG)
    loggers = [logging.getLogger(), logging.getLogger("uvicorn")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
    logging.getLogger().setLevel(logging.DEBUG)
    try:
        yield records
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.removeHandler(handler)
            logger.setLevel(level)


async def test_debug_logs_hold_no_secrets(database_dsn: str, db: Factory, record: Any) -> None:
    workspace = await db.workspace()
    user = await db.user(workspace, "owner")
    run = await db.run(workspace, status="running")
    cookie, authorization = "session=cookie-value-4f2a9c", "Bearer header-value-8d1e7b"
    secret_headers = {"Cookie": cookie, "Authorization": authorization}
    async with running_server(database_dsn, log_level="debug") as server:
        token = server.token(user)
        with capture_everything() as records:
            async with websockets.connect(server.ws_url, additional_headers=secret_headers) as ws:
                await ws.send(json.dumps({"op": "hello", "token": token}))
                assert json.loads(await ws.recv())["type"] == "welcome"
                await ws.send(json.dumps({"op": "subscribe", "ch": f"run:{run}"}))
                assert json.loads(await ws.recv())["type"] == "state"
            async with httpx.AsyncClient(base_url=server.http_url) as http:
                api = await http.get(
                    f"/api/runs/{run}",
                    headers={"Authorization": f"Bearer {token}", "Cookie": cookie},
                )
                assert api.status_code == 200
                bad = await http.get(f"/api/runs/{run}", headers=secret_headers)
                assert bad.status_code == 401
    # The test's own clients log what they send at DEBUG: only the server's records count.
    client_side = ("websockets.client", "httpx", "httpcore")
    server_records = [r for r in records if not r.name.startswith(client_side)]
    text = "\n".join(f"{r.name} {r.levelname} {r.getMessage()}" for r in server_records)
    # The capture sees the handshake's headers: the assertions below can fail.
    assert "< cookie: [redacted]" in text and "< authorization: [redacted]" in text, text[:2000]
    for secret in (token, token.rsplit(".", 1)[1], "cookie-value-4f2a9c", "header-value-8d1e7b"):
        assert secret not in text
    record(
        "hostile",
        "at `OPSPUSH_LOG_LEVEL=debug`: a hello token, `Cookie` and `Authorization` on the "
        "handshake and on API requests",
        4,
        "no log line at any level holds the token, the cookie or the header (names only, "
        "`[redacted]`)",
    )


SLOW_REQUESTS = {
    "nothing at all": b"",
    "half a request line": b"GET /w",
    "request line, half the headers": b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: web",
    "a complete request, then half of the next": b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /h",
}


async def test_requests_that_never_complete(database_dsn: str, record: Any) -> None:
    async with running_server(database_dsn, hello_timeout=0.5) as server:
        before = counts(server)
        with watch_logs() as logs:
            answers = {}
            for name, partial in SLOW_REQUESTS.items():
                reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
                writer.write(partial)
                await writer.drain()
                # The server closes it: EOF. (The guard only keeps a failure from hanging.)
                async with asyncio.timeout(20):
                    answers[name] = await reader.read()
                writer.close()
            await wait_until(lambda: server_sockets(server) <= before.server_sockets, 10)
            logs.assert_clean()
        await assert_no_leak(server, before)
    for name, answer in answers.items():
        if name.startswith("a complete request"):
            assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"ok"), answer
        else:
            assert answer == b"", (name, answer)
    record(
        "hostile",
        "slowloris: connections that send nothing, half a request line, half the headers, "
        "or half of a second request",
        len(SLOW_REQUESTS),
        "closed once `OPSPUSH_HELLO_TIMEOUT` passes without a complete request head; no leak",
    )


async def test_metrics_token(database_dsn: str, record: Any) -> None:
    token = "metrics-token-for-prometheus-0123"
    attempts: dict[str, dict[str, str]] = {
        "no header": {},
        "wrong token": {"Authorization": "Bearer metrics-token-for-prometheus-0124"},
        "a prefix of it": {"Authorization": "Bearer metrics-token"},
        "as Basic": {"Authorization": f"Basic {token}"},
        "right token": {"Authorization": f"Bearer {token}"},
    }
    async with (
        running_server(database_dsn, metrics_token=token) as server,
        httpx.AsyncClient(base_url=server.http_url) as http,
    ):
        results = {name: await http.get("/metrics", headers=h) for name, h in attempts.items()}
    statuses = {name: response.status_code for name, response in results.items()}
    assert statuses == {**dict.fromkeys(attempts, 401), "right token": 200}, statuses
    assert "opspush_sockets_open" in results["right token"].text
    assert all("opspush_" not in r.text for n, r in results.items() if n != "right token")
    record(
        "hostile",
        "`/metrics` with `OPSPUSH_METRICS_TOKEN` set: no, wrong, partial or Basic credentials",
        len(attempts),
        "401 without the exact bearer token (compared in constant time), 200 with it",
    )


async def test_default_per_user_limit(database_dsn: str, db: Factory, record: Any) -> None:
    user = await db.user()
    async with running_server(database_dsn) as server:  # the defaults: 20 per user
        allowed = server.settings.max_connections_per_user
        assert allowed == 20
        before = counts(server)
        with watch_logs() as logs:
            viewers = [await server.connect(user) for _ in range(allowed)]
            ws = await websockets.connect(server.ws_url)
            await ws.send(json.dumps({"op": "hello", "token": server.token(user)}))
            with pytest.raises(websockets.ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 10)
            refused = ws.close_code
            for viewer in viewers:
                await viewer.close()
            logs.assert_clean()
        await assert_no_leak(server, before)
    assert refused == protocol.CLOSE_TOO_MANY
    async with running_server(database_dsn, max_connections_per_user=0) as unlimited:
        viewers = [await unlimited.connect(user) for _ in range(allowed + 1)]
        for viewer in viewers:
            await viewer.close()
    record(
        "hostile",
        "one user opening sockets under the default settings",
        allowed + 1,
        "the first 20 served, the 21st closed with 4429 (on by default); "
        "`OPSPUSH_MAX_CONNECTIONS_PER_USER=0` lets all 21 in",
    )


async def _raw_head(port: int, head: str) -> bytes:
    """Send one request head on a raw socket; the status line of the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head.encode("latin-1"))
        await writer.drain()
        async with asyncio.timeout(10):
            line = await reader.readline()
    finally:
        writer.close()
    return line


async def test_repeated_origin_and_host_headers(
    database_dsn: str, db: Factory, record: Any
) -> None:
    """Two Origin or two Host headers: 400 on both upgrade paths and on plain HTTP, and no
    ERROR (the `/ws` core raised on them: an ERROR with two tracebacks per request)."""
    from tests.pusher_support import APP, pusher_server

    user = await db.user()
    async with pusher_server(database_dsn) as server:
        same = f"http://127.0.0.1:{server.port}"
        repeats = [
            f"Origin: {same}\r\nOrigin: http://evil.example\r\n",
            f"Origin: {same}\r\nOrigin: {same}\r\n",
            "Host: other.example\r\n",
            f"Origin: {same}\r\nHost: other.example\r\n",
        ]
        upgrade = (
            "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        )
        targets = [
            ("/ws", upgrade),
            (f"/app/{APP.key}?protocol=7", upgrade),
            ("/healthz", "Connection: close\r\n"),
        ]
        before = counts(server)
        answers: dict[str, bytes] = {}
        with watch_logs(verbose=True) as logs:
            for path, extra in targets:
                for repeat in repeats:
                    if path == "/healthz" and "Host" not in repeat:
                        continue  # plain HTTP routes read no Origin: a repeat is harmless
                    head = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
                    answers[f"{path} {repeat!r}"] = await _raw_head(
                        server.port, f"{head}{extra}{repeat}\r\n"
                    )
            # One foreign Origin is still a 403 on either path (not a 400).
            foreign = [
                await _raw_head(
                    server.port,
                    f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n{upgrade}"
                    "Origin: http://evil.example\r\n\r\n",
                )
                for path, _ in targets[:2]
            ]
            assert all(line.startswith(b"HTTP/1.1 403") for line in foreign), foreign
            # A well-formed upgrade still works, with its one Origin.
            viewer = await server.connect(user, origin=same)
            await viewer.close()
            await wait_until(lambda: server_sockets(server) <= before.server_sockets, 10)
            logs.assert_clean()
        await assert_no_leak(server, before)
    for name, answer in answers.items():
        assert answer.startswith(b"HTTP/1.1 400"), (name, answer)
    record(
        "hostile",
        "a repeated `Origin` or `Host` header on the `/ws` and `/app/{key}` upgrades, a "
        "repeated `Host` on a plain HTTP route",
        len(answers),
        "HTTP 400 on each; no ERROR log, no traceback; a normal upgrade still served; no leak",
    )
