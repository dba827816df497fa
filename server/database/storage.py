"""PostgreSQL access: the pool and the batched reads of the hot path.

Every method here is exactly one SQL statement, whatever the number of ids it is given:
that is what keeps database load flat as viewers grow.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from ..core.access import CapabilityTable, UserFacts
from .mapping import quote

Row = asyncpg.Record

log = logging.getLogger("opspush.storage")

MALFORMED_JSON = "opspush-malformed-json"  # the DETAIL of attach/attach.py's json_or NOTICE
MAX_REPORTED_ROWS = 10_000

# The display names are looked up by primary key in the same statement (still one per kind).
_RUN_COLUMNS = """
    r.id, r.workspace_id, r.tenant_id, r.type, r.status, r.outcome, r.summary_counts,
    r.failure_summary, r.created_at, r.started_at, r.completed_at,
    (SELECT w_.name FROM workspaces w_ WHERE w_.id = r.workspace_id) AS workspace_name,
    (SELECT t_.name FROM tenants t_ WHERE t_.id = r.tenant_id) AS tenant_name
"""

# A run whose tenant or workspace is gone (deleted, or soft-deleted in attach mode) is gone
# too: read as missing, never streamed with a null name. Primary-key lookups, like the names.
_RUN_TENANT_EXISTS = (
    "(r.tenant_id IS NULL OR EXISTS (SELECT 1 FROM tenants t_ WHERE t_.id = r.tenant_id))"
)
_RUN_IN_SCOPE = (
    f"EXISTS (SELECT 1 FROM workspaces w_ WHERE w_.id = r.workspace_id) AND {_RUN_TENANT_EXISTS}"
)

READ_RUNS = (
    f"SELECT {_RUN_COLUMNS} FROM operation_runs r WHERE r.id = ANY($1::bigint[]) "
    f"AND {_RUN_IN_SCOPE}"
)

# The tenant row (for scope) with its latest pack, if any; a tenant whose workspace is gone
# is gone too.
READ_PACK_CARDS = """
SELECT t.id AS tenant_id, t.workspace_id, t.name AS tenant_name, p.id, p.status, p.generated_at,
       p.expires_at, p.file_size, p.sha256, p.summary, p.created_at
FROM tenants t
LEFT JOIN LATERAL (
    SELECT * FROM review_packs rp
    WHERE rp.tenant_id = t.id
    ORDER BY rp.created_at DESC, rp.id DESC
    LIMIT 1
) p ON true
WHERE t.id = ANY($1::bigint[])
  AND EXISTS (SELECT 1 FROM workspaces w_ WHERE w_.id = t.workspace_id)
"""

# One row per run on a wall, plus one row with a NULL run id per existing workspace, so that
# an empty wall is told apart from a missing workspace. Active runs, and runs completed
# since $2; at most $3 of each kind per workspace; none whose tenant is gone.
READ_WALLS = f"""
SELECT w.id AS wall_id, r.*
FROM workspaces w
LEFT JOIN LATERAL (
    (SELECT {_RUN_COLUMNS} FROM operation_runs r
     WHERE r.workspace_id = w.id AND r.status IN ('queued', 'running') AND {_RUN_TENANT_EXISTS}
     ORDER BY r.created_at DESC LIMIT $3)
    UNION ALL
    (SELECT {_RUN_COLUMNS} FROM operation_runs r
     WHERE r.workspace_id = w.id AND r.completed_at >= $2
       AND r.status NOT IN ('queued', 'running') AND {_RUN_TENANT_EXISTS}
     ORDER BY r.completed_at DESC LIMIT $3)
) r ON true
WHERE w.id = ANY($1::bigint[])
"""

# Everything access decisions need for a set of users, in one statement: which users exist,
# their memberships and entitlements, and the two capability tables (small, read whole).
READ_ACCESS = """
SELECT 'u' AS tag, u.id AS user_id, NULL::bigint AS ref, NULL AS a, NULL AS b
  FROM users u WHERE u.id = ANY($1::bigint[])
UNION ALL
SELECT 'm', m.user_id, m.workspace_id, m.role, NULL
  FROM workspace_memberships m WHERE m.user_id = ANY($1::bigint[])
UNION ALL
SELECT 'e', e.user_id, e.tenant_id, NULL, NULL
  FROM tenant_entitlements e WHERE e.user_id = ANY($1::bigint[])
UNION ALL
SELECT 'r', NULL, NULL, rc.role, rc.capability FROM role_capabilities rc
UNION ALL
SELECT 't', NULL, NULL, tc.type, tc.capability FROM operation_type_capabilities tc
"""


async def _init_connection(connection: asyncpg.Connection) -> None:
    for type_name in ("json", "jsonb"):
        await connection.set_type_codec(
            type_name, encoder=json.dumps, decoder=json.loads, schema="pg_catalog"
        )


async def _keep_session(connection: asyncpg.Connection) -> None:
    """Release without asyncpg's default reset query.

    The default sends `pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL` on every
    release: four statements per one-statement read, the most frequent statements of the
    service. Pool connections here hold no session state (no locks, cursors, LISTEN or SET);
    asyncpg still rolls back an unfinished transaction and drops listener callbacks.
    """


class MalformedRows:
    """Logs a host row whose JSON reads as empty once, however often it is read.

    In attach mode the views say so with a NOTICE on every read of that row (a function
    cannot remember); this keeps one warning per row and column in the log.
    """

    def __init__(self) -> None:
        self.seen: set[str] = set()

    def __call__(self, _connection: object, message: asyncpg.PostgresLogMessage) -> None:
        if getattr(message, "detail", None) != MALFORMED_JSON:
            return
        text = str(getattr(message, "message", message))
        if text in self.seen or len(self.seen) >= MAX_REPORTED_ROWS:
            return
        self.seen.add(text)
        log.warning("%s", text)


async def create_pool(dsn: str, size: int, *, schema: str | None = None) -> asyncpg.Pool:
    """The serving pool. With `schema` (attach mode), names resolve in opspush's schema only,
    so the statements below read its views, and every transaction is read-only."""
    settings = {}
    setup = None
    if schema is not None:
        settings = {"search_path": quote(schema), "default_transaction_read_only": "on"}
        malformed = MalformedRows()

        # asyncpg drops log listeners on every release (and warns that one was left): the
        # listener is added again on every acquire, and that warning is expected here.
        warnings.filterwarnings(
            "ignore", message=".*active log listener", category=asyncpg.InterfaceWarning
        )

        async def setup(connection: asyncpg.pool.PoolConnectionProxy) -> None:
            connection.add_log_listener(malformed)

    pool = await asyncpg.create_pool(
        dsn,
        min_size=1,
        max_size=size,
        init=_init_connection,
        setup=setup,
        server_settings=settings,
        reset=_keep_session,
        command_timeout=30,
        # The hot statements are few and fixed: prepared once per connection.
        statement_cache_size=64,
    )
    assert pool is not None
    return pool


@dataclass(frozen=True)
class AccessSnapshot:
    users: dict[int, UserFacts]
    capabilities: CapabilityTable


class Storage:
    """The reads of the push service. Owns nothing: the pool's owner closes it."""

    def __init__(self, pool: asyncpg.Pool, query_timeout: float = 10.0) -> None:
        self.pool = pool
        self.query_timeout = query_timeout

    async def read_runs(self, run_ids: Sequence[int]) -> dict[int, Row]:
        rows = await self.pool.fetch(READ_RUNS, list(run_ids), timeout=self.query_timeout)
        return {row["id"]: row for row in rows}

    async def read_pack_cards(self, tenant_ids: Sequence[int]) -> dict[int, Row]:
        """Tenant id -> a row with the tenant's scope and its latest pack (`id` NULL if none)."""
        rows = await self.pool.fetch(READ_PACK_CARDS, list(tenant_ids), timeout=self.query_timeout)
        return {row["tenant_id"]: row for row in rows}

    async def read_walls(
        self, workspace_ids: Sequence[int], completed_since: datetime, limit: int
    ) -> dict[int, list[Row]]:
        """Workspace id -> its wall's runs; missing workspaces are absent from the result."""
        rows = await self.pool.fetch(
            READ_WALLS, list(workspace_ids), completed_since, limit, timeout=self.query_timeout
        )
        walls: dict[int, list[Row]] = {}
        for row in rows:
            runs = walls.setdefault(row["wall_id"], [])
            if row["id"] is not None:
                runs.append(row)
        return walls

    async def read_access(self, user_ids: Sequence[int]) -> AccessSnapshot:
        rows = await self.pool.fetch(READ_ACCESS, list(user_ids), timeout=self.query_timeout)
        existing: set[int] = set()
        roles: dict[int, dict[int, str]] = {}
        tenants: dict[int, set[int]] = {}
        by_role: dict[str, set[str]] = {}
        by_type: dict[str, set[str]] = {}
        for tag, user_id, ref, a, b in rows:
            if tag == "u":
                existing.add(user_id)
            elif tag == "m":
                roles.setdefault(user_id, {})[ref] = a
            elif tag == "e":
                tenants.setdefault(user_id, set()).add(ref)
            elif tag == "r":
                by_role.setdefault(a, set()).add(b)
            else:
                by_type.setdefault(a, set()).add(b)
        users = {
            user_id: UserFacts(
                user_id=user_id,
                exists=user_id in existing,
                roles=roles.get(user_id, {}),
                tenants=frozenset(tenants.get(user_id, ())),
            )
            for user_id in user_ids
        }
        capabilities = CapabilityTable(
            by_role={role: frozenset(caps) for role, caps in by_role.items()},
            by_run_type={kind: frozenset(caps) for kind, caps in by_type.items()},
        )
        return AccessSnapshot(users, capabilities)

    async def ping(self) -> None:
        await self.pool.fetchval("SELECT 1", timeout=2.0)
