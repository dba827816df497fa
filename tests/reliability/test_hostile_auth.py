"""Hostile handshakes: forged and stale tokens, foreign origins, probing for existence,
secrets in logs, and the per-user / per-address connection limits."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Any

import httpx
import jwt
import pytest
import websockets

from opspush.core import protocol
from tests.conftest import SECRET, running_server
from tests.factories import Factory
from tests.reliability.conftest import assert_no_leak, counts, wait_until, watch_logs


def b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def bad_tokens(user_id: int, missing_user: int) -> dict[str, str]:
    now = int(time.time())
    good = {"sub": str(user_id), "exp": now + 3600}
    return {
        "wrong key": jwt.encode(good, "another-secret-0123456789abcdef-xx", algorithm="HS256"),
        "alg none": f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(good)}.",
        "alg HS512 with the right key": jwt.encode(good, SECRET, algorithm="HS512"),
        "alg HS384 with the right key": jwt.encode(good, SECRET, algorithm="HS384"),
        "missing sub": jwt.encode({"exp": now + 3600}, SECRET, algorithm="HS256"),
        "non-numeric sub": jwt.encode({**good, "sub": "admin"}, SECRET, algorithm="HS256"),
        "numeric (not string) sub": jwt.encode({**good, "sub": user_id}, SECRET),
        "negative sub": jwt.encode({**good, "sub": "-1"}, SECRET, algorithm="HS256"),
        "huge sub": jwt.encode({**good, "sub": "9" * 40}, SECRET, algorithm="HS256"),
        "missing exp": jwt.encode({"sub": str(user_id)}, SECRET, algorithm="HS256"),
        "expired": jwt.encode({**good, "exp": now - 1}, SECRET, algorithm="HS256"),
        "string exp": jwt.encode({**good, "exp": "never"}, SECRET, algorithm="HS256"),
        "not yet valid": jwt.encode({**good, "nbf": now + 600}, SECRET, algorithm="HS256"),
        "user that does not exist": jwt.encode(
            {**good, "sub": str(missing_user)}, SECRET, algorithm="HS256"
        ),
        "tampered payload": ".".join(
            [
                jwt.encode(good, SECRET, algorithm="HS256").split(".")[0],
                b64({**good, "sub": str(user_id + 1)}),
                jwt.encode(good, SECRET, algorithm="HS256").split(".")[2],
            ]
        ),
        "garbage": "not.a.token",
        "lone surrogate": "\ud800",
        "empty": "",
        "very long": "a" * 60000,
    }


async def hello_close_code(url: str, token: Any) -> int | None:
    async with websockets.connect(url) as ws:
        await ws.send(json.dumps({"op": "hello", "token": token}))
        with pytest.raises(websockets.ConnectionClosed):
            async with asyncio.timeout(10):
                await ws.recv()
        return ws.close_code


async def test_forged_and_stale_tokens(database_dsn: str, db: Factory, record: Any) -> None:
    user = await db.user()
    missing = user + 10_000
    tokens = bad_tokens(user, missing)
    async with running_server(database_dsn) as server:
        before = counts(server)
        with watch_logs(verbose=True) as logs:
            codes = {name: await hello_close_code(server.ws_url, t) for name, t in tokens.items()}
            # A token that expires on an open socket: closed with 4401 within 5 s of exp.
            viewer_token = server.token(user, ttl=2)
            ws = await websockets.connect(server.ws_url)
            await ws.send(json.dumps({"op": "hello", "token": viewer_token}))
            assert json.loads(await ws.recv())["type"] == "welcome"
            exp = jwt.decode(viewer_token, options={"verify_signature": False})["exp"]
            with pytest.raises(websockets.ConnectionClosed):
                async with asyncio.timeout(15):
                    await ws.recv()
            assert ws.close_code == protocol.CLOSE_UNAUTHENTICATED
            assert time.time() <= exp + 5
            logs.assert_clean()
            text = logs.text()
            for token in [*tokens.values(), viewer_token]:
                if len(token) > 8:
                    assert token not in text
            for part in [viewer_token.split(".")[2], SECRET]:
                assert part not in text
        await assert_no_leak(server, before)
    assert codes == dict.fromkeys(tokens, protocol.CLOSE_UNAUTHENTICATED), codes
    record(
        "hostile",
        "bad tokens: wrong key, `alg: none`, HS384/HS512, missing/non-numeric/negative/huge "
        "`sub`, missing/string/past `exp`, future `nbf`, a user that does not exist, tampered "
        "payload, garbage, empty, lone surrogate, 60 KB",
        len(tokens),
        "4401 for each; no token or secret in the logs (INFO level)",
    )
    record("hostile", "a token expiring on an open socket", 1, "4401 within 5 s of `exp`")


ORIGINS = {
    "https://console.example": True,
    "https://CONSOLE.example": True,  # scheme and host are case-insensitive
    "https://console.example/": True,
    "https://evil.example": False,
    "https://console.example.evil.example": False,
    "https://evilconsole.example": False,
    "https://console.example:8443": False,
    "http://console.example": False,
    "null": False,
    "https://evil.example/https://console.example": False,
    "": False,
}


async def test_cross_site_websocket_hijacking(database_dsn: str, db: Factory, record: Any) -> None:
    user = await db.user()
    async with running_server(
        database_dsn, allowed_origins=frozenset({"https://console.example"})
    ) as server:
        with watch_logs() as logs:
            results = {}
            for origin, allowed in ORIGINS.items():
                try:
                    ws = await websockets.connect(
                        server.ws_url, additional_headers={"Origin": origin}
                    )
                except websockets.InvalidStatus as error:
                    results[origin] = error.response.status_code
                else:
                    await ws.send(json.dumps({"op": "hello", "token": server.token(user)}))
                    assert json.loads(await ws.recv())["type"] == "welcome"
                    await ws.close()
                    results[origin] = 101
                assert (results[origin] == 101) == allowed, (origin, results[origin])
            # No Origin at all (a non-browser client): accepted, the token guards it.
            viewer = await server.connect(user)
            await viewer.close()
            logs.assert_clean()
    assert all(code in (101, 403) for code in results.values())
    record(
        "hostile",
        "cross-site WebSocket hijacking: foreign, look-alike, suffix, port, scheme, `null` "
        "and empty `Origin`",
        len(ORIGINS),
        "HTTP 403 before accept unless the origin is exactly on the list (case-insensitive)",
    )


async def test_no_existence_leak(database_dsn: str, db: Factory, record: Any) -> None:
    workspace = await db.workspace("secret workspace name")
    other_workspace = await db.workspace()
    tenant = await db.tenant(workspace, "secret tenant")
    hidden_tenant = await db.tenant(workspace)
    outsider = await db.user(other_workspace, "owner")
    readonly = await db.user(workspace, "readonly", tenants=[tenant])
    run_secret = await db.run(workspace, tenant, status="running", type="secret.type")
    run_hidden = await db.run(workspace, hidden_tenant, status="running")
    missing = run_secret + 100_000
    probes = {
        # (user, channel): the answer must not tell existing from missing.
        "outsider, existing run": (outsider, f"run:{run_secret}"),
        "outsider, missing run": (outsider, f"run:{missing}"),
        "outsider, existing wall": (outsider, f"operations:{workspace}"),
        "outsider, missing wall": (outsider, f"operations:{workspace + 100_000}"),
        "outsider, existing tenant card": (outsider, f"review-pack:{tenant}"),
        "outsider, missing tenant card": (outsider, f"review-pack:{tenant + 100_000}"),
        "member, run of a tenant not entitled": (readonly, f"run:{run_hidden}"),
        "member, card of a tenant not entitled": (readonly, f"review-pack:{hidden_tenant}"),
    }
    async with running_server(database_dsn) as server:
        with watch_logs() as logs:
            answers = {}
            for name, (user, ch) in probes.items():
                viewer = await server.connect(user)
                answer = await viewer.subscribe(ch)
                await viewer.close()
                answers[name] = answer
                assert answer == {
                    "type": "error",
                    "ch": ch,
                    "code": "not_found",
                    "message": "no such channel",
                }, (name, answer)
                text = json.dumps(answer)
                for secret in ("secret workspace name", "secret tenant", "secret.type"):
                    assert secret not in text
            logs.assert_clean()
    record(
        "hostile",
        "existence probes: missing vs out-of-scope runs, walls, tenant cards",
        len(probes),
        "byte-identical `not_found` frames (but for the echoed channel); no data echoed",
    )


async def test_connection_limits(database_dsn: str, db: Factory, record: Any) -> None:
    first = await db.user()
    second = await db.user()
    async with running_server(
        database_dsn, max_connections_per_user=3, max_connections_per_address=5
    ) as server:
        before = counts(server)
        with watch_logs() as logs:
            mine = [await server.connect(first) for _ in range(3)]
            # A fourth socket of the same user: 4429 after its hello.
            ws = await websockets.connect(server.ws_url)
            await ws.send(json.dumps({"op": "hello", "token": server.token(first)}))
            with pytest.raises(websockets.ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 10)
            per_user_code = ws.close_code
            # Another user from the same address fills the address up to 5, then 4429.
            theirs = [await server.connect(second) for _ in range(2)]
            ws = await websockets.connect(server.ws_url)
            with pytest.raises(websockets.ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 10)
            per_address_code = ws.close_code
            # Closing one frees a place.
            await mine.pop().close()
            await wait_until(lambda: server.service.per_user[first] == 2, 10, "freed")
            mine.append(await server.connect(first))
            for viewer in mine + theirs:
                await viewer.close()
            logs.assert_clean()
        await assert_no_leak(server, before)
    assert per_user_code == per_address_code == protocol.CLOSE_TOO_MANY
    record(
        "hostile",
        "connections past `OPSPUSH_MAX_CONNECTIONS_PER_USER` and `_PER_ADDRESS`",
        2,
        "4429; a closed socket frees its place; no leak",
    )


def time_claim_tokens(user_id: int) -> dict[str, str]:
    """Signed with the right key: only the time claims are wrong (the review's finding 5)."""
    now = int(time.time())
    sub = str(user_id)

    def signed(**claims: Any) -> str:
        return jwt.encode({"sub": sub, **claims}, SECRET, algorithm="HS256")

    return {
        "exp 1e20": signed(exp=1e20),
        "exp Infinity": signed(exp=float("inf")),
        "exp NaN": signed(exp=float("nan")),
        "exp 10**400": signed(exp=10**400),
        "exp true": signed(exp=True),
        "nbf NaN": signed(exp=now + 600, nbf=float("nan")),
        "iat Infinity": signed(exp=now + 600, iat=float("inf")),
        "iat 5 minutes ahead": signed(iat=now + 300, exp=now + 900),
        "lives 25 h (exp - iat)": signed(iat=now, exp=now + 25 * 3600),
        "no iat, exp 25 h ahead": signed(exp=now + 25 * 3600),
    }


async def test_token_time_claims(database_dsn: str, db: Factory, record: Any) -> None:
    workspace = await db.workspace()
    user = await db.user(workspace, "owner")
    run = await db.run(workspace, status="running")
    tokens = time_claim_tokens(user)
    now = int(time.time())
    skewed = {  # the host's clock runs 10 s ahead of ours
        "iat 10 s ahead": jwt.encode({"sub": str(user), "iat": now + 10, "exp": now + 600}, SECRET),
        "nbf 10 s ahead": jwt.encode({"sub": str(user), "nbf": now + 10, "exp": now + 600}, SECRET),
    }
    async with running_server(database_dsn) as server:
        before = counts(server)
        with watch_logs(verbose=True) as logs:
            codes = {name: await hello_close_code(server.ws_url, t) for name, t in tokens.items()}
            async with httpx.AsyncClient(base_url=server.http_url) as http:
                statuses = {
                    name: (
                        await http.get(f"/api/runs/{run}", headers={"Authorization": f"Bearer {t}"})
                    ).status_code
                    for name, t in tokens.items()
                }
                skew_statuses = {
                    name: (
                        await http.get(f"/api/runs/{run}", headers={"Authorization": f"Bearer {t}"})
                    ).status_code
                    for name, t in skewed.items()
                }
            for token in skewed.values():
                async with websockets.connect(server.ws_url) as ws:
                    await ws.send(json.dumps({"op": "hello", "token": token}))
                    assert json.loads(await ws.recv())["type"] == "welcome"
            logs.assert_clean()  # no ERROR record, no traceback
        await assert_no_leak(server, before)
    assert codes == dict.fromkeys(tokens, protocol.CLOSE_UNAUTHENTICATED), codes
    assert statuses == dict.fromkeys(tokens, 401), statuses
    assert skew_statuses == dict.fromkeys(skewed, 200), skew_statuses
    record(
        "hostile",
        "signed tokens with bad time claims: `exp` 1e20, Infinity, NaN, 10**400, true; `nbf` "
        "NaN; `iat` Infinity or 5 minutes ahead; lifetimes past `OPSPUSH_MAX_TOKEN_TTL` (24 h) "
        "with and without `iat`",
        2 * len(tokens),
        "4401 on the WebSocket and 401 over HTTP for each; no ERROR log, no traceback",
    )
    record(
        "hostile",
        "`iat` and `nbf` 10 s ahead (the host's clock runs fast)",
        2 * len(skewed),
        "accepted, on the WebSocket and over HTTP (30 s leeway; `exp` stays exact)",
    )
