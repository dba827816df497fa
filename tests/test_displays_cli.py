"""`opspush display approve|list|revoke` against a real PostgreSQL: every refusal is one line
and exit 2; and the pairing storage's own limits (server/database/displays.py)."""

from __future__ import annotations

import asyncpg
import pytest

from opspush.core import displays as rules
from opspush.database import displays
from tests.factories import Factory
from tests.test_cli import opspush


def display_cli(dsn: str, *args: str) -> tuple[int, str, str]:
    done = opspush("display", *args, env={"DATABASE_URL": dsn})
    return done.returncode, done.stdout.strip(), done.stderr.strip()


async def new_code(pool: asyncpg.Pool, address: str = "203.0.113.9") -> displays.NewPairing:
    made = await displays.create_pairing(pool, address, "test", ttl=600, rate=0, max_pending=0)
    assert isinstance(made, displays.NewPairing)
    return made


async def test_approve_list_and_revoke_from_the_command_line(
    database_dsn: str, pool: asyncpg.Pool, db: Factory
) -> None:
    workspace = await db.workspace("NOC")
    approver = await db.user(workspace, "owner")
    pairing = await new_code(pool)
    code = rules.format_code(pairing.user_code).lower()  # typed in any case

    rc, out, err = display_cli(
        database_dsn,
        "approve",
        code,
        "--workspace",
        str(workspace),
        "--user",
        str(approver),
        "--name",
        "NOC wall",
    )
    assert rc == 0, err
    display_id = int(out.split()[2])
    assert (
        out == f"approved display {display_id} ('NOC wall') for the wall of workspace {workspace}"
    )

    polled = await displays.poll_pairing(pool, pairing.device_code)
    assert polled.state == "approved" and polled.credential is not None
    stored = await pool.fetchval("SELECT credential_hash FROM displays WHERE id = $1", display_id)
    assert stored == rules.digest(polled.credential) != polled.credential
    again = await displays.poll_pairing(pool, pairing.device_code)
    assert again.state == "expired" and again.credential is None  # handed out once

    rc, out, err = display_cli(database_dsn, "list", "--workspace", str(workspace))
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("id\tworkspace") and len(lines) == 2
    assert lines[1].startswith(
        f"{display_id}\t{workspace}\t{approver}\tNOC wall\tnever\t203.0.113.9"
    )

    assert (await displays.exchange(pool, polled.credential)) is not None
    rc, out, err = display_cli(database_dsn, "revoke", str(display_id))
    assert (rc, out) == (0, f"revoked display {display_id}"), err
    assert await displays.exchange(pool, polled.credential) is None  # at once
    rc, out, _ = display_cli(database_dsn, "list", "--workspace", str(workspace))
    assert out == "no displays"
    rc, _, err = display_cli(database_dsn, "revoke", str(display_id))
    assert (rc, err) == (2, f"opspush: no display {display_id} (or it was revoked already)")


async def test_every_refusal_of_approve_is_one_line_and_exit_2(
    database_dsn: str, pool: asyncpg.Pool, db: Factory
) -> None:
    workspace = await db.workspace()
    other = await db.workspace()
    owner = await db.user(workspace, "owner")
    guest = await db.user(workspace, "no-such-role")
    outsider = await db.user(other, "owner")
    code = rules.format_code((await new_code(pool)).user_code)

    def approve(user: int, ws: int = workspace, the_code: str = code, name: str = "wall") -> str:
        rc, out, err = display_cli(
            database_dsn,
            "approve",
            the_code,
            "--workspace",
            str(ws),
            "--user",
            str(user),
            "--name",
            name,
        )
        assert rc == 2 and out == "" and "\n" not in err and "Traceback" not in err, (rc, out, err)
        return err

    assert "is not a member" in approve(outsider)
    assert "is not a member" in approve(owner, ws=999_999)
    assert "is not a member" in approve(999_999)  # no such user
    assert "may not watch" in approve(guest)
    assert "a name of 1 to 100" in approve(owner, name="  ")
    assert "no display is waiting" in approve(owner, the_code="BCDF-GHJK")
    assert "no display is waiting" in approve(owner, the_code="not a code")
    # Five wrong codes in ten minutes, then even the right one is refused for a while.
    for _ in range(3):
        approve(owner, the_code="BCDF-GHJK")
    assert "too many wrong codes" in approve(owner)
    rc, _, err = display_cli(
        database_dsn, "approve", code, "--workspace", "0", "--user", "1", "--name", "x"
    )
    assert (rc, err) == (2, "opspush: --user and --workspace must be positive ids")
    rc, _, err = display_cli("postgresql://nobody@127.0.0.1:1/x", "list")
    assert rc == 2 and err.startswith("opspush: cannot connect") and "\n" not in err


async def test_a_code_is_single_use_and_expires(pool: asyncpg.Pool, db: Factory) -> None:
    workspace = await db.workspace()
    owner = await db.user(workspace, "owner")
    pairing = await new_code(pool)
    first = await displays.approve_as(pool, owner, pairing.user_code, workspace, "one")
    assert isinstance(first, displays.DisplayRow)
    second = await displays.approve_as(pool, owner, pairing.user_code, workspace, "two")
    assert second == "invalid_code"
    expired = await displays.create_pairing(pool, "198.51.100.1", "", ttl=0, rate=0)
    assert isinstance(expired, displays.NewPairing)
    assert (await displays.poll_pairing(pool, expired.device_code)).state == "expired"
    assert (
        await displays.approve_as(pool, owner, expired.user_code, workspace, "x") == "invalid_code"
    )
    assert (await displays.poll_pairing(pool, "no-such-device-code")).state == "expired"


async def test_pairing_requests_are_limited_per_address(pool: asyncpg.Pool) -> None:
    address = "192.0.2.77"
    made = [
        await displays.create_pairing(pool, address, "", ttl=600, rate=4, max_pending=2)
        for _ in range(3)
    ]
    assert [isinstance(m, displays.NewPairing) for m in made[:2]] == [True, True]
    assert made[2] == "too_many_pending"
    await pool.execute("UPDATE display_pairings SET expires_at = now() WHERE address = $1", address)
    more = [
        await displays.create_pairing(pool, address, "", ttl=600, rate=4, max_pending=2)
        for _ in range(3)
    ]
    # Two more pending places, but the fourth request of the minute is one too many.
    assert [isinstance(m, displays.NewPairing) for m in more[:2]] == [True, True]
    assert more[2] == "rate_limited"
    other = await displays.create_pairing(pool, "192.0.2.78", "", ttl=600, rate=4, max_pending=2)
    assert isinstance(other, displays.NewPairing)  # another address is not held back


@pytest.mark.parametrize("role_change", ["DELETE", "guest"])
async def test_a_display_whose_approver_lost_the_wall_is_revoked_at_exchange(
    pool: asyncpg.Pool, db: Factory, role_change: str
) -> None:
    workspace = await db.workspace()
    approver = await db.user(workspace, "owner")
    pairing = await new_code(pool)
    display = await displays.approve_as(pool, approver, pairing.user_code, workspace, "wall")
    assert isinstance(display, displays.DisplayRow)
    credential = (await displays.poll_pairing(pool, pairing.device_code)).credential
    assert (await displays.exchange(pool, credential)) is not None
    if role_change == "DELETE":
        await pool.execute("DELETE FROM workspace_memberships WHERE user_id = $1", approver)
    else:
        await db.member(workspace, approver, "guest")
    assert await displays.exchange(pool, credential) is None
    assert not await displays.is_active(pool, display.id)
    await db.member(workspace, approver, "owner")  # back: the display stays revoked
    assert await displays.exchange(pool, credential) is None
