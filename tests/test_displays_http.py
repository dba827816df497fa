"""Wall displays over HTTP against a real server and PostgreSQL: the whole pairing, and every
refusal as JSON (docs/displays.md)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from opspush.core.auth import mint_token, verify_token
from tests.conftest import RunningServer, running_server
from tests.factories import Factory


@pytest.fixture
async def http(server: RunningServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.http_url, timeout=10) as client:
        yield client


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def start(http: httpx.AsyncClient, address: str = "203.0.113.1") -> dict[str, Any]:
    """A pairing from `address` (the test server trusts no proxy: X-Forwarded-For is
    ignored, so each test's pairings come from 127.0.0.1 unless it runs its own server)."""
    response = await http.post("/api/displays/pairings", headers={"User-Agent": "Kiosk/1"})
    assert response.status_code == 201, response.text
    assert response.headers["cache-control"] == "no-store"
    return dict(response.json())


async def pair(
    http: httpx.AsyncClient, server: RunningServer, db: Factory
) -> tuple[dict[str, Any], int, int]:
    """A display approved and collected by its page: (the poll's answer, workspace, approver)."""
    workspace = await db.workspace("Ops")
    approver = await db.user(workspace, "owner")
    pairing = await start(http)
    approved = await http.post(
        "/api/displays/approve",
        json={"code": pairing["user_code"], "workspace_id": workspace, "name": "NOC wall"},
        headers=bearer(server.token(approver)),
    )
    assert approved.status_code == 201, approved.text
    polled = await http.post(
        "/api/displays/pairings/poll", json={"device_code": pairing["device_code"]}
    )
    assert polled.status_code == 200 and polled.json()["status"] == "approved", polled.text
    return polled.json(), workspace, approver


@pytest.fixture(autouse=True)
async def fresh_limits(server: RunningServer) -> None:
    """The pairing limits count per address; every test here comes from 127.0.0.1."""
    await server.service.pool.execute("DELETE FROM display_pairings")


async def test_pair_approve_poll_and_exchange(
    http: httpx.AsyncClient, server: RunningServer, db: Factory
) -> None:
    workspace = await db.workspace("Ops")
    approver = await db.user(workspace, "owner")
    pairing = await start(http)
    code = pairing["user_code"]
    assert len(code) == 9 and code[4] == "-"
    assert pairing["verification_uri"] == f"{server.http_url}/displays/approve"
    assert pairing["verification_uri_complete"] == f"{server.http_url}/displays/approve?code={code}"
    assert pairing["qr_svg"].startswith("<svg") and pairing["interval"] == 2
    assert pairing["expires_in"] == 600 and len(pairing["device_code"]) >= 43

    poll = {"device_code": pairing["device_code"]}
    pending = await http.post("/api/displays/pairings/poll", json=poll)
    assert pending.json() == {"status": "pending", "interval": 2}

    approved = await http.post(
        "/api/displays/approve",
        json={"code": code.lower(), "workspace_id": workspace, "name": "NOC wall"},
        headers=bearer(server.token(approver)),
    )
    assert approved.status_code == 201, approved.text
    display = approved.json()["display"]
    assert display["name"] == "NOC wall" and display["approver_id"] == approver
    assert display["user_agent"] == "Kiosk/1" and display["last_address"] == "127.0.0.1"

    polled = (await http.post("/api/displays/pairings/poll", json=poll)).json()
    assert polled["status"] == "approved" and polled["credential"].startswith("opd_")
    assert polled["display"] == {"id": display["id"], "name": "NOC wall", "workspace_id": workspace}
    again = await http.post("/api/displays/pairings/poll", json=poll)
    assert (again.status_code, again.json()["error"]) == (410, "expired")  # handed out once

    exchanged = await http.post("/api/displays/token", json={"credential": polled["credential"]})
    assert exchanged.status_code == 200, exchanged.text
    token = exchanged.json()["token"]
    identity = verify_token(token, server.settings.secret)
    assert (identity.user_id, identity.display_id, identity.wall_id) == (
        approver,
        display["id"],
        workspace,
    )
    assert 890 <= identity.expires_at - time.time() <= 900
    assert exchanged.json()["expires_in"] == 900

    listed = await http.get(
        "/api/displays", params={"workspace_id": workspace}, headers=bearer(server.token(approver))
    )
    assert [d["id"] for d in listed.json()["displays"]] == [display["id"]]
    assert listed.json()["displays"][0]["last_seen_at"] is not None


async def test_a_display_token_is_refused_everywhere_over_http(
    http: httpx.AsyncClient, server: RunningServer, db: Factory
) -> None:
    polled, workspace, _ = await pair(http, server, db)
    token = (
        await http.post("/api/displays/token", json={"credential": polled["credential"]})
    ).json()["token"]
    run = await db.run(workspace)
    for method, path, kwargs in [
        ("GET", f"/api/runs/{run}", {}),
        ("GET", "/api/displays", {"params": {"workspace_id": workspace}}),
        ("DELETE", f"/api/displays/{polled['display']['id']}", {}),
        (
            "POST",
            "/api/displays/approve",
            {"json": {"code": "BCDF-GHJK", "workspace_id": workspace, "name": "x"}},
        ),
    ]:
        response = await http.request(method, path, headers=bearer(token), **kwargs)
        assert (response.status_code, response.json()) == (403, {"error": "forbidden"}), path


async def test_revoke_over_http_stops_the_credential_at_once(
    http: httpx.AsyncClient, server: RunningServer, db: Factory
) -> None:
    polled, workspace, approver = await pair(http, server, db)
    display_id = polled["display"]["id"]
    outsider = await db.user(await db.workspace(), "owner")
    refused = await http.delete(
        f"/api/displays/{display_id}", headers=bearer(server.token(outsider))
    )
    assert (refused.status_code, refused.json()) == (404, {"error": "not_found"})
    missing = await http.delete("/api/displays/99999999", headers=bearer(server.token(approver)))
    assert missing.status_code == 404
    done = await http.delete(f"/api/displays/{display_id}", headers=bearer(server.token(approver)))
    assert (done.status_code, done.json()) == (200, {"revoked": display_id})
    exchanged = await http.post("/api/displays/token", json={"credential": polled["credential"]})
    assert (exchanged.status_code, exchanged.json()["error"]) == (401, "unauthorized")
    twice = await http.delete(f"/api/displays/{display_id}", headers=bearer(server.token(approver)))
    assert twice.status_code == 404
    listed = await http.get(
        "/api/displays", params={"workspace_id": workspace}, headers=bearer(server.token(approver))
    )
    assert listed.json() == {"displays": []}


async def test_every_refusal_is_json(
    http: httpx.AsyncClient, server: RunningServer, db: Factory
) -> None:
    workspace = await db.workspace()
    owner = await db.user(workspace, "owner")
    guest = await db.user(workspace, "no-such-role")
    outsider = await db.user(await db.workspace(), "owner")
    code = (await start(http))["user_code"]
    channels = mint_token(owner, server.settings.secret, ttl=60, channels=["run:1"])

    async def approve(body: Any, token: str | None = None, **headers: str) -> tuple[int, str]:
        auth = {} if token is None else bearer(token)
        response = await http.post(
            "/api/displays/approve",
            content=body if isinstance(body, bytes) else None,
            json=None if isinstance(body, bytes) else body,
            headers={**auth, **headers},
        )
        assert response.headers["content-type"] == "application/json", response.text
        return response.status_code, response.json()["error"]

    good = {"code": code, "workspace_id": workspace, "name": "wall"}
    assert await approve(good) == (401, "unauthorized")
    assert await approve(good, "not-a-token") == (401, "unauthorized")
    assert await approve(good, channels) == (403, "forbidden")
    assert await approve(b"{not json", server.token(owner)) == (400, "bad_request")
    assert await approve(b"[1]", server.token(owner)) == (400, "bad_request")
    assert await approve(b"x" * 5000, server.token(owner)) == (400, "bad_request")
    assert await approve({**good, "workspace_id": "3"}, server.token(owner)) == (400, "bad_request")
    assert await approve({**good, "name": ""}, server.token(owner)) == (400, "bad_request")
    assert await approve(good, server.token(outsider)) == (404, "not_found")
    assert await approve({**good, "workspace_id": 99999999}, server.token(owner)) == (
        404,
        "not_found",
    )
    assert await approve(good, server.token(guest)) == (403, "forbidden")
    # Wrong codes: unknown and malformed alike, then the approver is held back.
    for wrong in ["BCDF-GHJK", "nonsense", "BCDF-GHJL", "BCDF-GHJM", "BCDF-GHJN"]:
        assert await approve({**good, "code": wrong}, server.token(owner)) == (400, "invalid_code")
    assert await approve(good, server.token(owner)) == (429, "rate_limited")
    other = await db.user(workspace, "owner")
    created = await http.post(
        "/api/displays/approve", json=good, headers=bearer(server.token(other))
    )
    assert created.status_code == 201  # another approver is not held back
    used = await approve(good, server.token(other))
    assert used == (400, "invalid_code")  # single use: the same answer as a wrong code

    for body in [b"", b"{}", b'{"device_code": 5}']:
        response = await http.post("/api/displays/pairings/poll", content=body)
        assert (response.status_code, response.json()["error"]) == (400, "bad_request")
    unknown = await http.post("/api/displays/pairings/poll", json={"device_code": "x" * 43})
    assert (unknown.status_code, unknown.json()["error"]) == (410, "expired")
    for body in [
        b"",
        b'{"credential": "opd_nothing-like-a-real-credential"}',
        b'{"credential": 1}',
    ]:
        response = await http.post("/api/displays/token", content=body)
        assert (response.status_code, response.json()["error"]) == (401, "unauthorized")
    for params in [{}, {"workspace_id": "x"}, {"workspace_id": "0"}]:
        response = await http.get(
            "/api/displays", params=params, headers=bearer(server.token(owner))
        )
        assert (response.status_code, response.json()["error"]) == (400, "bad_request")
    response = await http.get(
        "/api/displays", params={"workspace_id": workspace}, headers=bearer(server.token(guest))
    )
    assert (response.status_code, response.json()["error"]) == (403, "forbidden")


async def test_pairing_requests_are_limited_per_address(database_dsn: str) -> None:
    async with (
        running_server(database_dsn, pairing_rate=5) as limited,
        httpx.AsyncClient(base_url=limited.http_url) as http,
    ):
        pool = limited.service.pool
        await pool.execute("DELETE FROM display_pairings")

        async def ask() -> tuple[int, str | None]:
            response = await http.post("/api/displays/pairings")
            return response.status_code, response.json().get("error")

        # Three codes may wait at once per address ...
        assert [await ask() for _ in range(4)] == [(201, None)] * 3 + [(429, "too_many_pending")]
        await pool.execute("UPDATE display_pairings SET expires_at = now()")
        # ... and five may be asked for in a minute.
        assert [await ask() for _ in range(3)] == [(201, None)] * 2 + [(429, "rate_limited")]


async def test_an_approval_address_of_the_host(database_dsn: str) -> None:
    url = "https://console.example/displays/pair?code={code}"
    async with (
        running_server(database_dsn, display_approve_url=url) as host,
        httpx.AsyncClient(base_url=host.http_url) as http,
    ):
        await host.service.pool.execute("DELETE FROM display_pairings")
        pairing = (await http.post("/api/displays/pairings")).json()
        code = pairing["user_code"]
        assert (
            pairing["verification_uri_complete"]
            == f"https://console.example/displays/pair?code={code}"
        )
