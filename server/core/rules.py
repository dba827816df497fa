"""The domain rules of docs/domain.md as pure functions of data and the current time.

Nothing here does I/O: status normalization, progress, and the interval rules that decide
when a channel is read next. The subscription engine and the HTTP API both call these, so
they are the single source of truth.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any, Final, Literal

DisplayStatus = Literal[
    "queued", "running", "succeeded", "partial", "failed", "blocked", "cancelled", "unknown"
]

ACTIVE_RUN_STATUSES: Final = frozenset({"queued", "running"})
ACTIVE_PACK_STATUSES: Final = frozenset({"queued", "generating"})
TERMINAL_PACK_STATUSES: Final = frozenset({"ready", "failed", "expired"})

# Seconds between reads of a channel.
FRESH_RUN_INTERVAL: Final = 1
YOUNG_RUN_INTERVAL: Final = 5
OLD_RUN_INTERVAL: Final = 10
PACK_INTERVAL: Final = 10
IDLE_WALL_INTERVAL: Final = 10

FRESH_RUN_AGE: Final = 10.0
YOUNG_RUN_AGE: Final = 60.0

# A wall shows the runs completed in this window, besides the active ones.
WALL_RECENT_SECONDS: Final = 15 * 60

COUNT_KEYS: Final = ("total", "processed", "succeeded", "failed", "skipped")

_COMPLETED_OUTCOMES: Final[Mapping[str, DisplayStatus]] = {
    "succeeded": "succeeded",
    "partially_succeeded": "partial",
    "blocked": "blocked",
    "cancelled": "cancelled",
}


def display_status(status: str | None, outcome: str | None) -> DisplayStatus:
    """The status a person sees. The first matching row of docs/domain.md wins."""
    if status == "failed" or outcome == "failed":
        return "failed"
    if status == "queued":
        return "queued"
    if status == "running":
        return "running"
    if status == "completed" and outcome is not None:
        return _COMPLETED_OUTCOMES.get(outcome, "unknown")
    return "unknown"


def is_active_run(display: DisplayStatus) -> bool:
    """Only queued and running runs are watched; unknown counts as non-active."""
    return display in ACTIVE_RUN_STATUSES


def run_interval(display: DisplayStatus, created_at: datetime | None, now: datetime) -> int | None:
    """Seconds until a run is read again, or None when no more reads follow."""
    if not is_active_run(display):
        return None
    if created_at is None:
        return OLD_RUN_INTERVAL
    age = (now - created_at).total_seconds()
    if age < FRESH_RUN_AGE:
        return FRESH_RUN_INTERVAL
    if age < YOUNG_RUN_AGE:
        return YOUNG_RUN_INTERVAL
    return OLD_RUN_INTERVAL


def is_active_pack(status: str | None) -> bool:
    return status in ACTIVE_PACK_STATUSES


def pack_interval(status: str | None) -> int | None:
    """The review pack card: every 10 s while the latest pack is in progress, else done.

    No pack at all, or a status outside docs/domain.md, is final as well: there is nothing
    in progress to follow.
    """
    return PACK_INTERVAL if is_active_pack(status) else None


def wall_interval(active_run_intervals: Iterable[int | None]) -> int:
    """The shortest interval of the wall's active runs; 10 s when none is active."""
    intervals = [i for i in active_run_intervals if i is not None]
    return min(intervals, default=IDLE_WALL_INTERVAL)


def _whole_number(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if isinstance(value, float) and value.is_integer() and value >= 0:
        return int(value)
    return None


def summary_counts(raw: Any) -> dict[str, int]:
    """The known counters that hold whole numbers; anything else is ignored."""
    if not isinstance(raw, Mapping):
        return {}
    counts: dict[str, int] = {}
    for key in COUNT_KEYS:
        number = _whole_number(raw.get(key))
        if number is not None:
            counts[key] = number
    return counts


def progress(counts: Mapping[str, int]) -> float | None:
    """processed/total in 0..1, or None when it is not determinate."""
    total = counts.get("total")
    processed = counts.get("processed")
    if total is None or processed is None or total <= 0:
        return None
    return min(1.0, processed / total)


MAX_FAILURES: Final = 50


def failure_summary(raw: Any) -> list[dict[str, Any]]:
    """The well-formed `{code, message, count?}` entries, at most MAX_FAILURES of them."""
    if not isinstance(raw, list):
        return []
    failures: list[dict[str, Any]] = []
    for entry in raw:
        if not isinstance(entry, Mapping):
            continue
        code, message = entry.get("code"), entry.get("message")
        if not isinstance(code, str) or not isinstance(message, str):
            continue
        item: dict[str, Any] = {"code": code, "message": message}
        count = _whole_number(entry.get("count"))
        if count is not None:
            item["count"] = count
        failures.append(item)
        if len(failures) == MAX_FAILURES:
            break
    return failures
