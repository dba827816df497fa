"""The live demo: a seeded workspace and a simulator that keeps it moving.

The simulator plays the host application: it creates runs, moves them from queued through
running (counters rising) to an outcome, and moves review packs through queued, generating
and ready, writing plain rows as the real console would. opspush only ever reads them.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs

import asyncpg
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..config import PusherApp
from ..core.outcomes import failure_reasons, outcome_from_counts
from ..pusher import protocol as pusher

log = logging.getLogger("opspush.demo")

Db = asyncpg.Connection | asyncpg.pool.PoolConnectionProxy

DEMO_WORKSPACE = "Contoso Operations"
RUN_TYPES = ("inventory.sync", "policy.backup", "compliance.scan", "directory.export")
# role -> the tenants (by position) a user of that role is entitled to
DEMO_USERS = (
    ("Olivia Owner", "owner@demo.opspush", "owner", ()),
    ("Max Manager", "manager@demo.opspush", "manager", (0, 1, 2)),
    ("Oscar Operator", "operator@demo.opspush", "operator", (0, 1)),
    ("Rita Readonly", "readonly@demo.opspush", "readonly", (0,)),
    ("Aude Auditor", "auditor@demo.opspush", "auditor", (0,)),  # a custom role, no rows
)
TENANTS = ("Fabrikam", "Northwind Traders", "Tailspin Toys")


@dataclass(frozen=True)
class DemoIds:
    workspace_id: int
    tenant_ids: list[int]
    user_ids: dict[str, int]  # role -> user id

    @property
    def owner_id(self) -> int:
        return self.user_ids["owner"]


async def seed(connection: Db) -> DemoIds:
    """Create the demo workspace once; return its ids (idempotent)."""
    async with connection.transaction():
        await connection.execute("SELECT pg_advisory_xact_lock(4242)")
        workspace_id = await connection.fetchval(
            "SELECT id FROM workspaces WHERE name = $1", DEMO_WORKSPACE
        )
        if workspace_id is None:
            workspace_id = await connection.fetchval(
                "INSERT INTO workspaces (name) VALUES ($1) RETURNING id", DEMO_WORKSPACE
            )
            for index, name in enumerate(TENANTS):
                await connection.execute(
                    "INSERT INTO tenants (workspace_id, name, external_id) VALUES ($1, $2, $3)",
                    workspace_id,
                    name,
                    f"{index + 1:08d}-0000-4000-8000-000000000000",
                )
        tenant_ids = [
            r["id"]
            for r in await connection.fetch(
                "SELECT id FROM tenants WHERE workspace_id = $1 ORDER BY id", workspace_id
            )
        ]
        user_ids: dict[str, int] = {}
        for name, email, role, tenants in DEMO_USERS:
            user_id = await connection.fetchval(
                """INSERT INTO users (name, email) VALUES ($1, $2)
                   ON CONFLICT (email) DO UPDATE SET name = EXCLUDED.name RETURNING id""",
                name,
                email,
            )
            await connection.execute(
                """INSERT INTO workspace_memberships (workspace_id, user_id, role)
                   VALUES ($1, $2, $3) ON CONFLICT DO NOTHING""",
                workspace_id,
                user_id,
                role,
            )
            for position in tenants:
                await connection.execute(
                    "INSERT INTO tenant_entitlements VALUES ($1, $2) ON CONFLICT DO NOTHING",
                    tenant_ids[position],
                    user_id,
                )
            user_ids[role] = user_id
    return DemoIds(workspace_id, tenant_ids, user_ids)


# The run the demo links: about five minutes at 1 to 3 items a second.
SHOWCASE_TOTAL = 600
SHOWCASE_PACE = (1, 3)
# Per run and step: a queued run is blocked, a running one is cancelled, some items fail;
# a run whose first items all fail keeps failing them all (its outcome: failed).
BLOCK_CHANCE = 0.02
CANCEL_CHANCE = 0.005
FAILURE_CHANCE = 0.03
DOOMED_CHANCE = 0.05


class Simulator:
    """One step a second: new runs arrive, running ones progress, some finish.

    A run stops at its end, or when it is blocked or cancelled; its outcome and failure
    reasons follow from its counters (core/outcomes.py).
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        ids: DemoIds,
        *,
        max_active: int = 6,
        seed_value: int | None = None,
    ) -> None:
        self.pool = pool
        self.ids = ids
        self.max_active = max_active
        self.random = random.Random(seed_value)
        self.showcase: set[int] = set()  # the runs that move at SHOWCASE_PACE
        # Since the last report: runs created, runs finished by outcome; and in flight now.
        self.created = 0
        self.finished: Counter[str] = Counter()
        self.in_flight = 0

    async def run(
        self,
        period: float = 1.0,
        *,
        report_every: int = 0,
        report: Callable[[str], None] = log.info,
    ) -> None:
        """Step every `period` seconds; every `report_every` steps (0: never), `report` what
        the steps did."""
        steps = 0
        while True:
            try:
                await self.step()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
                log.warning("simulator step failed: %s", error)
            steps += 1
            if report_every and steps % report_every == 0:
                report(
                    progress_line(
                        report_every * period, self.created, self.finished, self.in_flight
                    )
                )
                self.created, self.finished = 0, Counter()
            await asyncio.sleep(period)

    async def start_showcase_run(self) -> int:
        """A run in flight at once that lasts minutes: the one to link. A new one at every
        start, since what a previous start left running may be about to finish."""
        async with self.pool.acquire() as db:
            run_id = await self._create_run(
                db, datetime.now(UTC), total=SHOWCASE_TOTAL, running=True
            )
        self.showcase.add(run_id)
        return run_id

    async def step(self) -> None:
        rng = self.random
        now = datetime.now(UTC)
        async with self.pool.acquire() as db, db.transaction():
            active = await db.fetch(
                """SELECT id, status, summary_counts FROM operation_runs
                   WHERE workspace_id = $1 AND status IN ('queued', 'running')""",
                self.ids.workspace_id,
            )
            self.in_flight = len(active)
            if len(active) < self.max_active and rng.random() < 0.5:
                await self._create_run(db, now)
                self.in_flight += 1
            for run in active:
                counts = run["summary_counts"] if isinstance(run["summary_counts"], dict) else {}
                if run["status"] == "queued":
                    if rng.random() < BLOCK_CHANCE:
                        await self._finish(db, run["id"], counts, now)
                    elif rng.random() < 0.5:
                        await db.execute(
                            """UPDATE operation_runs SET status = 'running', started_at = $2,
                               updated_at = $2 WHERE id = $1""",
                            run["id"],
                            now,
                        )
                    continue
                await self._advance(db, run["id"], counts, now)
            await self._advance_packs(db, now)
            # Keep the demo tables small: forget runs finished more than an hour ago.
            await db.execute(
                "DELETE FROM operation_runs WHERE completed_at < $1", now - timedelta(hours=1)
            )

    async def _create_run(
        self, db: Db, now: datetime, *, total: int | None = None, running: bool = False
    ) -> int:
        rng = self.random
        tenant_id = rng.choice([*self.ids.tenant_ids, None])
        self.created += 1
        run_id: int = await db.fetchval(
            """INSERT INTO operation_runs (workspace_id, tenant_id, type, status, outcome,
                   summary_counts, initiated_by_user_id, created_at, updated_at, started_at)
               VALUES ($1, $2, $3, $4, 'pending', $5::jsonb, $6, $7, $7,
                       CASE WHEN $4 = 'running' THEN $7::timestamptz END)
               RETURNING id""",
            self.ids.workspace_id,
            tenant_id,
            rng.choice(RUN_TYPES),
            "running" if running else "queued",
            {
                "total": total or rng.choice((20, 50, 120, 300)),
                "processed": 0,
                "succeeded": 0,
                "failed": 0,
            },
            self.ids.owner_id,
            now,
        )
        return run_id

    async def _advance(self, db: Db, run_id: int, counts: dict[str, int], now: datetime) -> None:
        rng = self.random
        showcase = run_id in self.showcase
        total = int(counts.get("total", 100))
        processed = int(counts.get("processed", 0))
        failed = int(counts.get("failed", 0))
        pace = SHOWCASE_PACE if showcase else (1, max(2, total // 8))
        new = min(total - processed, rng.randint(*pace))
        if processed and failed >= processed:
            new_failed = new  # failing throughout
        elif not processed:
            new_failed = new if not showcase and rng.random() < DOOMED_CHANCE else 0
        else:
            new_failed = rng.randint(1, min(new, 3)) if new and rng.random() < FAILURE_CHANCE else 0
        processed, failed = processed + new, failed + new_failed
        counts = {
            "total": total,
            "processed": processed,
            "succeeded": processed - failed,
            "failed": failed,
        }
        cancelled = not showcase and rng.random() < CANCEL_CHANCE
        if processed < total and not cancelled:
            await db.execute(
                """UPDATE operation_runs SET summary_counts = $2::jsonb, updated_at = $3
                   WHERE id = $1""",
                run_id,
                counts,
                now,
            )
            return
        await self._finish(db, run_id, counts, now)

    async def _finish(self, db: Db, run_id: int, counts: dict[str, int], now: datetime) -> None:
        """Complete a run with the outcome and the failure reasons its counters imply."""
        outcome = outcome_from_counts(counts)
        await db.execute(
            """UPDATE operation_runs SET status = 'completed', outcome = $2,
                   summary_counts = $3::jsonb, failure_summary = $4::jsonb,
                   completed_at = $5, updated_at = $5
               WHERE id = $1""",
            run_id,
            outcome,
            counts,
            failure_reasons(outcome, counts),
            now,
        )
        self.showcase.discard(run_id)
        self.finished[outcome] += 1
        self.in_flight -= 1

    async def _advance_packs(self, db: Db, now: datetime) -> None:
        rng = self.random
        latest = await db.fetch(
            """SELECT DISTINCT ON (tenant_id) id, tenant_id, status, created_at
               FROM review_packs WHERE workspace_id = $1
               ORDER BY tenant_id, created_at DESC, id DESC""",
            self.ids.workspace_id,
        )
        by_tenant = {row["tenant_id"]: row for row in latest}
        for tenant_id in self.ids.tenant_ids:
            pack = by_tenant.get(tenant_id)
            if pack is None or (
                pack["status"] in ("ready", "failed")
                and now - pack["created_at"] > timedelta(seconds=60)
            ):
                if rng.random() < 0.05 or pack is None:
                    await db.execute(
                        """INSERT INTO review_packs (workspace_id, tenant_id, status, options,
                               initiated_by_user_id, created_at, updated_at)
                           VALUES ($1, $2, 'queued', '{"include_pii": false}', $3, $4, $4)""",
                        self.ids.workspace_id,
                        tenant_id,
                        self.ids.owner_id,
                        now,
                    )
            elif pack["status"] == "queued" and rng.random() < 0.2:
                await db.execute(
                    "UPDATE review_packs SET status = 'generating', updated_at = $2 WHERE id = $1",
                    pack["id"],
                    now,
                )
            elif pack["status"] == "generating" and rng.random() < 0.1:
                size = rng.randint(200_000, 9_000_000)
                await db.execute(
                    """UPDATE review_packs SET status = 'ready', generated_at = $2,
                           expires_at = $2::timestamptz + interval '30 days', file_size = $3,
                           sha256 = md5(random()::text) || md5(random()::text),
                           file_path = 'review-packs/' || id || '.zip', file_disk = 'local',
                           summary = '{"policies": 42, "findings": 7}', updated_at = $2
                       WHERE id = $1""",
                    pack["id"],
                    now,
                    size,
                )


def progress_line(seconds: float, created: int, finished: Mapping[str, int], in_flight: int) -> str:
    """What the simulator did lately, in one line (`opspush simulate` says it every minute)."""
    outcomes = ", ".join(
        f"{count} {outcome.replace('_', ' ')}" for outcome, count in sorted(finished.items())
    )
    return (
        f"last {seconds:g} s: runs created {created}, finished {sum(finished.values())}"
        + (f" ({outcomes})" if outcomes else "")
        + f"; in flight {in_flight}"
    )


def broadcasting_auth_route(app: PusherApp) -> Route:
    """The demo's stand-in for the host's `/broadcasting/auth`: it signs any opspush channel.

    Only `opspush demo` serves it; in production the host signs, after its own
    `routes/channels.php` check.
    """

    async def auth(request: Request) -> Response:
        form = parse_qs((await request.body()).decode(errors="replace"))
        socket_id = (form.get("socket_id") or [""])[0]
        channel = (form.get("channel_name") or [""])[0]
        if not pusher.valid_socket_id(socket_id) or pusher.own_channel(channel) is None:
            return JSONResponse({"message": "forbidden"}, status_code=403)
        signature = pusher.sign(app.secret, f"{socket_id}:{channel}")
        return JSONResponse({"auth": f"{app.key}:{signature}"})

    return Route("/demo/broadcasting/auth", auth, methods=["POST"])
