"""Access decided by the host at mint time: a token's `channels` claim (docs/attach.md)."""

from __future__ import annotations

import time

import httpx
import jwt
import pytest
import websockets

from opspush.config import ConfigError, Settings
from opspush.core.auth import ALGORITHM, InvalidToken, mint_token, verify_token
from tests.conftest import SECRET, RunningServer, Viewer, running_server
from tests.factories import Factory


def claims_token(**claims: object) -> str:
    return jwt.encode(claims, SECRET, algorithm=ALGORITHM)


@pytest.mark.parametrize(
    ("claims", "accepted"),
    [
        ({"channels": ["run:1", "review-pack:2"], "exp_in": 600}, True),
        ({"channels": [], "exp_in": 600}, True),  # grants nothing: every channel forbidden
        ({"channels": ["run:1"], "exp_in": 901}, False),  # beyond the 900 s default
        ({"channels": ["run:1"], "exp_in": 100, "iat_ago": 1000}, False),  # lived 1100 s
        ({"channels": "run:1", "exp_in": 60}, False),
        ({"channels": ["run:x"], "exp_in": 60}, False),
        ({"channels": [1], "exp_in": 60}, False),
        ({"channels": ["run:1"] * 101, "exp_in": 60}, False),
        ({"exp_in": 86_400}, True),  # no claim: the tables decide, any lifetime
    ],
)  # fmt: skip
def test_the_claim_is_checked_and_short_lived(claims: dict[str, object], accepted: bool) -> None:
    now = time.time()
    body: dict[str, object] = {"sub": "7", "exp": now + float(claims.pop("exp_in"))}  # type: ignore[arg-type]
    body["iat"] = now - float(claims.pop("iat_ago", 0))  # type: ignore[arg-type]
    body.update(claims)
    token = claims_token(**body)
    if accepted:
        identity = verify_token(token, SECRET, now=now)
        channels = body.get("channels")
        assert identity.channels == (None if channels is None else frozenset(channels))  # type: ignore[arg-type]
    else:
        with pytest.raises(InvalidToken):
            verify_token(token, SECRET, now=now)
    assert verify_token(
        mint_token(7, SECRET, ttl=1000, now=now, channels=["run:1"]),
        SECRET,
        now=now,
        max_channel_ttl=1000,
    ).channels == frozenset({"run:1"})


def test_the_ttl_limit_is_configurable() -> None:
    env = {"OPSPUSH_SECRET": SECRET, "OPSPUSH_MAX_CHANNEL_TOKEN_TTL": "120"}
    assert Settings.from_env(env).max_channel_token_ttl == 120
    with pytest.raises(ConfigError, match="OPSPUSH_MAX_CHANNEL_TOKEN_TTL"):
        Settings.from_env({**env, "OPSPUSH_MAX_CHANNEL_TOKEN_TTL": "soon"})


async def connect_with(server: RunningServer, token: str) -> Viewer:
    viewer = Viewer(await websockets.connect(server.ws_url))
    await viewer.send({"op": "hello", "token": token})
    return viewer


async def test_listed_channels_are_granted_and_every_other_is_forbidden(
    server: RunningServer, db: Factory, viewers: list[Viewer]
) -> None:
    ws = await db.workspace()
    tenant = await db.tenant(ws)
    outsider = await db.user(await db.workspace(), "readonly")  # no member of `ws`
    run = await db.run(ws, tenant, status="running")
    other = await db.run(ws, tenant, status="running")
    await db.pack(ws, tenant, status="generating")
    listed = [f"run:{run}", f"review-pack:{tenant}", f"operations:{ws}", f"run:{2**40}"]
    token = mint_token(outsider, SECRET, ttl=300, channels=listed)
    viewer = await connect_with(server, token)
    viewers.append(viewer)
    assert (await viewer.recv())["type"] == "welcome"
    assert (await viewer.subscribe(f"run:{run}"))["type"] == "state"
    card = await viewer.subscribe(f"review-pack:{tenant}")
    assert card["type"] == "state" and card["data"]["pack"]["status"] == "generating"
    for ch, code in (
        (f"run:{other}", "forbidden"),  # not listed, though it exists
        (f"operations:{ws}", "forbidden"),  # listed, but walls are filtered per user
        (f"run:{2**40}", "not_found"),  # listed; existence still comes from the database
    ):
        frame = await viewer.subscribe(ch)
        assert (frame["type"], frame["ch"], frame["code"]) == ("error", ch, code), frame
    # The same user without the claim: the tables decide, and they say not_found.
    plain = await server.connect(outsider)
    viewers.append(plain)
    assert (await plain.subscribe(f"run:{run}"))["code"] == "not_found"


async def test_http_reads_with_a_channels_token_answer_as_the_socket_does(
    server: RunningServer, db: Factory
) -> None:
    ws = await db.workspace()
    tenant = await db.tenant(ws)
    outsider = await db.user(await db.workspace(), "readonly")  # no member of `ws`
    member = await db.user(ws, "owner")  # may see everything in `ws` by the tables
    run = await db.run(ws, tenant, status="running")
    other = await db.run(ws, tenant, status="running")
    listed = [f"run:{run}", f"review-pack:{tenant}", f"run:{2**40}"]

    async def status(user: int, path: str) -> int:
        token = mint_token(user, SECRET, ttl=300, channels=listed)
        async with httpx.AsyncClient(base_url=server.http_url) as http:
            response = await http.get(path, headers={"Authorization": f"Bearer {token}"})
        return response.status_code

    for user in (outsider, member):  # the claim decides, whatever the tables say
        assert await status(user, f"/api/runs/{run}") == 200
        assert await status(user, f"/api/tenants/{tenant}/review-pack") == 200
        assert await status(user, f"/api/runs/{other}") == 403  # not listed, though it exists
        assert await status(user, f"/api/runs/{2**40}") == 404  # listed, but missing
    assert await status(2**40, f"/api/runs/{run}") == 404  # a user who does not exist


async def test_a_long_lived_channels_token_is_refused_with_4401(
    database_dsn: str, db: Factory, viewers: list[Viewer]
) -> None:
    user = await db.user(await db.workspace(), "owner")
    async with running_server(database_dsn, max_channel_token_ttl=60) as server:
        viewer = await connect_with(server, mint_token(user, SECRET, ttl=61, channels=["run:1"]))
        viewers.append(viewer)
        assert await viewer.closed() == 4401
        viewer = await connect_with(server, mint_token(user, SECRET, ttl=60, channels=["run:1"]))
        viewers.append(viewer)
        assert (await viewer.recv())["type"] == "welcome"


def test_the_token_command_mints_a_channels_token(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from opspush.commands.cli import main

    monkeypatch.setenv("OPSPUSH_SECRET", SECRET)
    monkeypatch.delenv("OPSPUSH_CONFIG", raising=False)
    assert main(["token", "--user", "7", "--ttl", "300", "--channel", "run:42"]) == 0
    token = capsys.readouterr().out.strip()
    assert verify_token(token, SECRET).channels == frozenset({"run:42"})
    assert main(["token", "--user", "7", "--ttl", "901", "--channel", "run:42"]) == 2
    assert main(["token", "--user", "7", "--ttl", "60", "--channel", "operations:x"]) == 2
    assert capsys.readouterr().err.count("\n") == 2  # one line each
