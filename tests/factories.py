"""Rows for tests, written straight to PostgreSQL as the host application would write them."""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from datetime import datetime
from typing import Any

import asyncpg

_counter = itertools.count(1)


class Factory:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def workspace(self, name: str | None = None) -> int:
        value: int = await self.pool.fetchval(
            "INSERT INTO workspaces (name) VALUES ($1) RETURNING id",
            name or f"workspace {next(_counter)}",
        )
        return value

    async def tenant(self, workspace_id: int, name: str | None = None) -> int:
        value: int = await self.pool.fetchval(
            "INSERT INTO tenants (workspace_id, name) VALUES ($1, $2) RETURNING id",
            workspace_id,
            name or f"tenant {next(_counter)}",
        )
        return value

    async def user(
        self,
        workspace_id: int | None = None,
        role: str | None = None,
        tenants: Iterable[int] = (),
    ) -> int:
        n = next(_counter)
        user_id: int = await self.pool.fetchval(
            "INSERT INTO users (name, email) VALUES ($1, $2) RETURNING id",
            f"user {n}",
            f"user{n}-{id(self)}@test.opspush",
        )
        if workspace_id is not None and role is not None:
            await self.member(workspace_id, user_id, role)
        for tenant_id in tenants:
            await self.entitle(tenant_id, user_id)
        return user_id

    async def member(self, workspace_id: int, user_id: int, role: str) -> None:
        await self.pool.execute(
            """INSERT INTO workspace_memberships (workspace_id, user_id, role) VALUES ($1, $2, $3)
               ON CONFLICT (workspace_id, user_id) DO UPDATE SET role = EXCLUDED.role""",
            workspace_id,
            user_id,
            role,
        )

    async def entitle(self, tenant_id: int, user_id: int) -> None:
        await self.pool.execute(
            "INSERT INTO tenant_entitlements VALUES ($1, $2) ON CONFLICT DO NOTHING",
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
        outcome: str = "pending",
        created_at: datetime | None = None,
        summary_counts: dict[str, Any] | None = None,
    ) -> int:
        value: int = await self.pool.fetchval(
            """INSERT INTO operation_runs (workspace_id, tenant_id, type, status, outcome,
                   summary_counts, created_at)
               VALUES ($1, $2, $3, $4, $5, $6, coalesce($7, now())) RETURNING id""",
            workspace_id,
            tenant_id,
            type,
            status,
            outcome,
            summary_counts or {},
            created_at,
        )
        return value

    async def update_run(self, run_id: int, **columns: Any) -> None:
        await self._update("operation_runs", run_id, columns)

    async def pack(
        self, workspace_id: int, tenant_id: int, *, status: str = "queued", **columns: Any
    ) -> int:
        value: int = await self.pool.fetchval(
            """INSERT INTO review_packs (workspace_id, tenant_id, status)
               VALUES ($1, $2, $3) RETURNING id""",
            workspace_id,
            tenant_id,
            status,
        )
        if columns:
            await self._update("review_packs", value, columns)
        return value

    async def update_pack(self, pack_id: int, **columns: Any) -> None:
        await self._update("review_packs", pack_id, columns)

    async def _update(self, table: str, row_id: int, columns: dict[str, Any]) -> None:
        names = list(columns)
        assignments = ", ".join(f"{name} = ${i + 2}" for i, name in enumerate(names))
        await self.pool.execute(
            f"UPDATE {table} SET {assignments}, updated_at = now() WHERE id = $1",
            row_id,
            *columns.values(),
        )

    async def execute(self, sql: str, *args: Any) -> str:
        result: str = await self.pool.execute(sql, *args)
        return result
