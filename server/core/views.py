"""What a viewer sees: rows from the database turned into the `data` of protocol.md.

Pure functions of a row (any mapping, such as an asyncpg Record) and the current time.
The output is deterministic for equal input, so its encoding can be hashed to detect change.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

from . import rules
from .access import RunScope, TenantScope


class RowLike(Protocol):
    """A database row: an asyncpg Record or a plain dict."""

    def __getitem__(self, key: str, /) -> Any: ...


def iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def run_scope(row: RowLike) -> RunScope:
    return RunScope(workspace_id=row["workspace_id"], tenant_id=row["tenant_id"], type=row["type"])


def tenant_scope(row: RowLike) -> TenantScope:
    return TenantScope(tenant_id=row["tenant_id"], workspace_id=row["workspace_id"])


def run_display(row: RowLike) -> rules.DisplayStatus:
    return rules.display_status(row["status"], row["outcome"])


def run_data(row: RowLike) -> dict[str, Any]:
    counts = rules.summary_counts(row["summary_counts"])
    return {
        "id": row["id"],
        "workspace_id": row["workspace_id"],
        "workspace_name": row["workspace_name"],
        "tenant_id": row["tenant_id"],
        "tenant_name": row["tenant_name"],
        "type": row["type"],
        "status": run_display(row),
        "raw_status": row["status"],
        "outcome": row["outcome"],
        "summary_counts": counts,
        "progress": rules.progress(counts),
        "failure_summary": rules.failure_summary(row["failure_summary"]),
        "created_at": iso(row["created_at"]),
        "started_at": iso(row["started_at"]),
        "completed_at": iso(row["completed_at"]),
    }


def run_interval(row: RowLike, now: datetime) -> int | None:
    return rules.run_interval(run_display(row), row["created_at"], now)


def pack_data(tenant_id: int, pack: RowLike | None, *, tenant_name: str | None) -> dict[str, Any]:
    if pack is None:
        return {"tenant_id": tenant_id, "tenant_name": tenant_name, "pack": None}
    summary = pack["summary"]
    return {
        "tenant_id": tenant_id,
        "tenant_name": tenant_name,
        "pack": {
            "id": pack["id"],
            "status": pack["status"],
            "generated_at": iso(pack["generated_at"]),
            "expires_at": iso(pack["expires_at"]),
            "file_size": pack["file_size"],
            "sha256": pack["sha256"],
            "summary": summary if isinstance(summary, dict) else {},
            "created_at": iso(pack["created_at"]),
        },
    }


def pack_interval(pack: RowLike | None) -> int | None:
    return rules.pack_interval(None if pack is None else pack["status"])


def wall_rows(rows: Iterable[RowLike]) -> list[RowLike]:
    """Active runs first (newest first), then finished ones (most recently finished first)."""
    active: list[RowLike] = []
    finished: list[RowLike] = []
    for row in rows:
        (active if rules.is_active_run(run_display(row)) else finished).append(row)
    epoch = datetime.min.replace(tzinfo=UTC)
    active.sort(key=lambda r: (r["created_at"], r["id"]), reverse=True)
    finished.sort(key=lambda r: (r["completed_at"] or epoch, r["id"]), reverse=True)
    return active + finished


def wall_data(workspace_id: int, runs: Sequence[RowLike]) -> dict[str, Any]:
    return {"workspace_id": workspace_id, "runs": [run_data(row) for row in runs]}


def wall_interval(rows: Iterable[RowLike], now: datetime) -> int:
    return rules.wall_interval(run_interval(row, now) for row in rows)
