"""Wall displays in attach mode: opspush's own tables in its schema, written by the serving
role with the README's grants alone, the CLI included."""

from __future__ import annotations

import asyncpg

from opspush.attach.host_demo import MAPPING
from opspush.core import displays as rules
from opspush.database import displays
from opspush.database.storage import create_pool
from tests.attach.conftest import Host
from tests.test_cli import opspush


async def test_the_serving_role_pairs_approves_exchanges_and_revokes(host: Host) -> None:
    workspace = await host.console.workspace()
    owner = await host.console.user(workspace, "owner")
    pool = await create_pool(host.serving_dsn, 2, schema=host.mapping.schema)
    try:
        pairing = await displays.create_pairing(pool, "203.0.113.5", "kiosk", ttl=600, rate=10)
        assert isinstance(pairing, displays.NewPairing)
        approved = await displays.approve_as(pool, owner, pairing.user_code, workspace, "NOC")
        assert isinstance(approved, displays.DisplayRow), approved
        polled = await displays.poll_pairing(pool, pairing.device_code)
        assert polled.state == "approved"
        assert await displays.exchange(pool, polled.credential) is not None
        env = {"DATABASE_URL": host.serving_dsn, "OPSPUSH_CONFIG": str(MAPPING)}
        listed = opspush("display", "list", "--workspace", str(workspace), env=env)
        assert listed.returncode == 0 and f"{approved.id}\t{workspace}" in listed.stdout, listed
        revoked = opspush("display", "revoke", str(approved.id), env=env)
        assert (revoked.returncode, revoked.stdout.strip()) == (0, f"revoked display {approved.id}")
        assert await displays.exchange(pool, polled.credential) is None
        # Still nothing of the host's: these tables are opspush's own.
        db = await asyncpg.connect(host.serving_dsn)
        try:
            assert (
                await db.fetchval(
                    "SELECT count(*) FROM pg_class WHERE relname = 'displays' "
                    "AND relnamespace = 'public'::regnamespace"
                )
                == 0
            )
        finally:
            await db.close()
    finally:
        await pool.close()
    assert rules.format_code(pairing.user_code)[4] == "-"
