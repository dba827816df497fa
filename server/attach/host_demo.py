"""A Laravel-shaped console database (examples/laravel/) and writes as the console makes them.

Used by `opspush demo --attach` and by the attach tests. The console writes its own tables
with plain SQL: naive UTC timestamps, JSON as json (and a pack summary as text), soft deletes.
opspush only reads them, through the views `opspush attach` makes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import secrets
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote as url_quote
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from ..core.outcomes import failure_reasons, outcome_from_counts
from ..database.mapping import DOMAIN, load, quote
from ..database.migrations import new_database
from ..resources import examples_dir
from . import attach

log = logging.getLogger("opspush.host_demo")

EXAMPLE = examples_dir() / "laravel"  # package data in the wheel
SCHEMA = EXAMPLE / "schema.sql"
MAPPING = EXAMPLE / "opspush.toml"
NOW = "(now() AT TIME ZONE 'UTC')"  # what Laravel writes into timestamp(0) columns

# spatie-style permissions of the console's built-in roles (docs/domain.md's defaults).
PERMISSIONS = {
    "owner": ("operations.view", "review_pack.view", "review_pack.manage"),
    "manager": ("operations.view", "review_pack.view", "review_pack.manage"),
    "operator": ("operations.view", "review_pack.view", "review_pack.manage"),
    "readonly": ("operations.view", "review_pack.view"),
}

Db = asyncpg.Pool | asyncpg.Connection


def grant_lines(schema: str, role: str) -> list[str]:
    """The README's GRANT lines: USAGE on opspush's schema, SELECT on its views, and the
    writes of its own display tables; nothing else."""
    views = ", ".join(f"{quote(schema)}.{quote(name)}" for name in DOMAIN)
    tables = ", ".join(f"{quote(schema)}.{quote(name)}" for name in attach.DISPLAY_TABLES)
    return [
        f"GRANT USAGE ON SCHEMA {quote(schema)} TO {quote(role)}",
        f"GRANT SELECT ON {views} TO {quote(role)}",
        # Wall displays (docs/displays.md): opspush's own tables, nothing of the host's.
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON {tables} TO {quote(role)}",
    ]


def as_role(dsn: str, role: str, password: str) -> str:
    parts = urlsplit(dsn)
    host = parts.netloc.rsplit("@", 1)[-1]
    netloc = f"{url_quote(role, safe='')}:{url_quote(password, safe='')}@{host}"
    return urlunsplit(parts._replace(netloc=netloc))


async def create_host(admin_dsn: str, name: str, *, replace: bool = True) -> str:
    """A fresh console database, created as its migrations would; returns its URL."""
    dsn = await new_database(admin_dsn, name, replace=replace)
    db = await asyncpg.connect(dsn)
    try:
        await db.execute(SCHEMA.read_text())
        await seed_permissions(db)
    finally:
        await db.close()
    return dsn


async def seed_permissions(db: Db) -> None:
    for role, permissions in PERMISSIONS.items():
        role_id = await db.fetchval(
            f"""INSERT INTO roles (name, guard_name, created_at, updated_at)
                VALUES ($1, 'web', {NOW}, {NOW}) RETURNING id""",
            role,
        )
        for permission in permissions:
            permission_id = await db.fetchval(
                f"""INSERT INTO permissions (name, guard_name, created_at, updated_at)
                    VALUES ($1, 'web', {NOW}, {NOW})
                    ON CONFLICT (name, guard_name) DO UPDATE SET name = EXCLUDED.name
                    RETURNING id""",
                permission,
            )
            await db.execute(
                "INSERT INTO role_has_permissions (permission_id, role_id) VALUES ($1, $2)",
                permission_id,
                role_id,
            )


async def create_serving_role(admin: Db, role: str, password: str, schema: str) -> None:
    """A login role that may read opspush's views and nothing else (the README's lines)."""
    await admin.execute(f"CREATE ROLE {quote(role)} LOGIN PASSWORD '{password}'")
    for line in grant_lines(schema, role):
        await admin.execute(line)


class Console:
    """Writes as the console's code does: plain SQL on its own tables."""

    def __init__(self, db: Db) -> None:
        self.db = db
        self._n = 0

    def _next(self) -> int:
        self._n += 1
        return self._n

    async def _id(self, sql: str, *args: Any) -> int:
        value: int = await self.db.fetchval(sql, *args)
        return value

    async def workspace(self, name: str | None = None) -> int:
        n = self._next()
        return await self._id(
            f"""INSERT INTO workspaces (name, slug, settings, created_at, updated_at)
                VALUES ($1, $2, '{{"theme": "dark"}}', {NOW}, {NOW}) RETURNING id""",
            name or f"workspace {n}",
            f"ws-{n}-{secrets.token_hex(4)}",
        )

    async def tenant(self, workspace_id: int, name: str | None = None) -> int:
        return await self._id(
            f"""INSERT INTO tenants (workspace_id, display_name, tenant_guid, created_at,
                    updated_at)
                VALUES ($1, $2, gen_random_uuid(), {NOW}, {NOW}) RETURNING id""",
            workspace_id,
            name or f"tenant {self._next()}",
        )

    async def user(
        self, workspace_id: int | None = None, role: str | None = None, tenants: Any = ()
    ) -> int:
        n = self._next()
        user_id = await self._id(
            f"""INSERT INTO users (name, email, password, created_at, updated_at)
                VALUES ($1, $2, '$2y$12$notarealhash', {NOW}, {NOW}) RETURNING id""",
            f"user {n}",
            f"user{n}-{secrets.token_hex(4)}@console.test",
        )
        if workspace_id is not None and role is not None:
            await self.member(workspace_id, user_id, role)
        for tenant_id in tenants:
            await self.entitle(tenant_id, user_id)
        return user_id

    async def member(self, workspace_id: int, user_id: int, role: str) -> None:
        await self.db.execute(
            f"""INSERT INTO workspace_user (workspace_id, user_id, role, created_at, updated_at)
                VALUES ($1, $2, $3, {NOW}, {NOW})
                ON CONFLICT (workspace_id, user_id)
                DO UPDATE SET role = EXCLUDED.role, deleted_at = NULL, updated_at = {NOW}""",
            workspace_id,
            user_id,
            role,
        )

    async def remove_member(self, workspace_id: int, user_id: int) -> None:
        """The console soft-deletes a membership."""
        await self.db.execute(
            f"""UPDATE workspace_user SET deleted_at = {NOW}, updated_at = {NOW}
                WHERE workspace_id = $1 AND user_id = $2""",
            workspace_id,
            user_id,
        )

    async def entitle(self, tenant_id: int, user_id: int) -> None:
        await self.db.execute(
            f"""INSERT INTO tenant_user (tenant_id, user_id, created_at, updated_at)
                VALUES ($1, $2, {NOW}, {NOW}) ON CONFLICT DO NOTHING""",
            tenant_id,
            user_id,
        )

    async def run(
        self,
        workspace_id: int,
        tenant_id: int | None = None,
        *,
        type: str = "inventory.sync",
        status: str = "queued",
        user_id: int | None = None,
        summary_counts: Any = None,
    ) -> int:
        return await self._id(
            f"""INSERT INTO operation_runs (workspace_id, tenant_id, user_id, type, status,
                    outcome, context, summary_counts, failure_summary, created_at, updated_at)
                VALUES ($1, $2, $3, $4, $5, 'pending', '{{}}', $6::json, '[]', {NOW}, {NOW})
                RETURNING id""",
            workspace_id,
            tenant_id,
            user_id,
            type,
            status,
            json.dumps(summary_counts or {}),
        )

    async def start_run(self, run_id: int) -> None:
        await self.db.execute(
            f"""UPDATE operation_runs SET status = 'running', started_at = {NOW},
                    updated_at = {NOW} WHERE id = $1""",
            run_id,
        )

    async def progress(self, run_id: int, counts: dict[str, int]) -> None:
        await self.db.execute(
            f"""UPDATE operation_runs SET summary_counts = $2::json, updated_at = {NOW}
                WHERE id = $1""",
            run_id,
            json.dumps(counts),
        )

    async def complete_run(
        self, run_id: int, outcome: str = "succeeded", failures: list[Any] | None = None
    ) -> None:
        await self.db.execute(
            f"""UPDATE operation_runs SET status = 'completed', outcome = $2,
                    failure_summary = $3::json, completed_at = {NOW}, updated_at = {NOW}
                WHERE id = $1""",
            run_id,
            outcome,
            json.dumps(failures or []),
        )

    async def pack(self, workspace_id: int, tenant_id: int, user_id: int | None = None) -> int:
        return await self._id(
            f"""INSERT INTO review_packs (workspace_id, tenant_id, initiated_by_user_id, status,
                    options, created_at, updated_at)
                VALUES ($1, $2, $3, 'queued', '{{"include_pii": false}}', {NOW}, {NOW})
                RETURNING id""",
            workspace_id,
            tenant_id,
            user_id,
        )

    async def pack_status(self, pack_id: int, status: str) -> None:
        await self.db.execute(
            f"UPDATE review_packs SET status = $2, updated_at = {NOW} WHERE id = $1",
            pack_id,
            status,
        )

    async def pack_ready(self, pack_id: int, summary: str = '{"policies": 42}') -> None:
        """`summary` is text holding JSON (or, from a buggy writer, not)."""
        await self.db.execute(
            f"""UPDATE review_packs SET status = 'ready', generated_at = {NOW},
                    expires_at = {NOW} + interval '30 days', file_size = 123456,
                    sha256 = md5(id::text) || md5(id::text), file_disk = 'local',
                    file_path = 'review-packs/' || id || '.zip', summary = $2,
                    updated_at = {NOW}
                WHERE id = $1""",
            pack_id,
            summary,
        )


# -- the demo ------------------------------------------------------------------------------

DEMO_DATABASE = "opspush_demo_console"
DEMO_ROLE = "opspush_demo_serve"


@dataclass(frozen=True)
class DemoHost:
    dsn: str  # the console's own connection (its writes)
    serving_dsn: str  # the least-privilege serving role
    workspace_id: int
    tenant_ids: list[int]
    owner_id: int
    run_id: int  # the run the demo links: in flight for minutes (SHOWCASE_TOTAL)


# The run the demo links: about five minutes at 1 to 3 items a second.
SHOWCASE_TOTAL = 600
SHOWCASE_PACE = (1, 3)
FAILURE_CHANCE = 0.05  # per running run and step: an item fails


async def prepare(
    admin_dsn: str,
    say: Callable[[str], None],
    *,
    database: str = DEMO_DATABASE,
    role: str = DEMO_ROLE,
) -> DemoHost:
    """A fresh seeded console database, attached with triggers, and its serving role."""
    mapping = load(MAPPING)
    dsn = await create_host(admin_dsn, database)
    db = await asyncpg.connect(dsn)
    try:
        console = Console(db)
        workspace = await console.workspace("Contoso Operations")
        tenants = [
            await console.tenant(workspace, n) for n in ("Fabrikam", "Northwind", "Tailspin")
        ]
        owner = await console.user(workspace, "owner")
        await console.user(workspace, "operator", tenants[:2])
        for tenant in tenants:
            await console.pack(workspace, tenant, owner)
        showcase = await console.run(
            workspace,
            tenants[0],
            type="directory.export",
            user_id=owner,
            summary_counts={"total": SHOWCASE_TOTAL, "processed": 0, "succeeded": 0, "failed": 0},
        )
        await console.start_run(showcase)
        await attach.attach(db, mapping, triggers=True, say=say)
        password = secrets.token_urlsafe(16)
        await db.execute(f"DROP ROLE IF EXISTS {quote(role)}")
        await create_serving_role(db, role, password, mapping.schema)
    finally:
        await db.close()
    return DemoHost(dsn, as_role(dsn, role, password), workspace, tenants, owner, showcase)


class HostSimulator:
    """The console at work: runs are queued, run, progress and finish; packs get generated."""

    def __init__(self, db: Db, host: DemoHost, seed_value: int | None = None) -> None:
        self.console = Console(db)
        self.db = db
        self.host = host
        self.random = random.Random(seed_value)

    async def run(self, period: float = 1.0) -> None:
        while True:
            try:
                await self.step()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
                log.warning("simulator step failed: %s", error)
            await asyncio.sleep(period)

    async def step(self) -> None:
        rng, console = self.random, self.console
        active = await self.db.fetch(
            """SELECT id, status, summary_counts::text AS counts FROM operation_runs
               WHERE workspace_id = $1 AND status IN ('queued', 'running')""",
            self.host.workspace_id,
        )
        if len(active) < 5 and rng.random() < 0.5:
            total = rng.choice((20, 50, 120))
            await console.run(
                self.host.workspace_id,
                rng.choice([*self.host.tenant_ids, None]),
                type=rng.choice(("inventory.sync", "policy.backup", "compliance.scan")),
                user_id=self.host.owner_id,
                summary_counts={"total": total, "processed": 0, "succeeded": 0, "failed": 0},
            )
        for run in active:
            if run["status"] == "queued":
                await console.start_run(run["id"])
                continue
            counts = json.loads(run["counts"] or "{}")
            total = int(counts.get("total", 50))
            pace = SHOWCASE_PACE if run["id"] == self.host.run_id else (1, max(2, total // 5))
            processed = min(total, int(counts.get("processed", 0)) + rng.randint(*pace))
            failed = int(counts.get("failed", 0)) + (1 if rng.random() < FAILURE_CHANCE else 0)
            counts = {
                "total": total,
                "processed": processed,
                "succeeded": processed - failed,
                "failed": failed,
            }
            await console.progress(run["id"], counts)
            if processed >= total:
                outcome = outcome_from_counts(counts)
                await console.complete_run(run["id"], outcome, failure_reasons(outcome, counts))
        packs = await self.db.fetch(
            """SELECT DISTINCT ON (tenant_id) id, tenant_id, status FROM review_packs
               WHERE workspace_id = $1 AND deleted_at IS NULL
               ORDER BY tenant_id, created_at DESC, id DESC""",
            self.host.workspace_id,
        )
        for pack in packs:
            if pack["status"] == "queued" and rng.random() < 0.3:
                await console.pack_status(pack["id"], "generating")
            elif pack["status"] == "generating" and rng.random() < 0.2:
                await console.pack_ready(pack["id"])
            elif pack["status"] == "ready" and rng.random() < 0.02:
                await console.pack(self.host.workspace_id, pack["tenant_id"], self.host.owner_id)


Hook = Callable[[Any], Awaitable[Coroutine[Any, Any, None] | None]]


def startup(settings: Any, host: DemoHost, links: Callable[..., None]) -> Hook:
    async def start(service: Any) -> Coroutine[Any, Any, None]:
        links(settings, host.workspace_id, host.tenant_ids, host.owner_id, host.run_id)

        async def simulate() -> None:
            db = await asyncpg.connect(host.dsn)
            try:
                await HostSimulator(db, host).run()
            finally:
                await db.close()

        return simulate()

    return start
