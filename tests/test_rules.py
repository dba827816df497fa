"""Every row of docs/domain.md's status and interval tables, and the boundary ages."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from opspush.core import rules

NOW = datetime(2026, 11, 28, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("status", "outcome", "display", "active"),
    [
        # first matching row wins: a failure outcome beats a stale status
        ("failed", "pending", "failed", False),
        ("failed", None, "failed", False),
        ("queued", "failed", "failed", False),
        ("running", "failed", "failed", False),
        ("completed", "failed", "failed", False),
        ("queued", "pending", "queued", True),
        ("running", "pending", "running", True),
        ("completed", "succeeded", "succeeded", False),
        ("completed", "partially_succeeded", "partial", False),
        ("completed", "blocked", "blocked", False),
        ("completed", "cancelled", "cancelled", False),
        # anything else, or missing
        ("completed", "pending", "unknown", False),
        ("completed", None, "unknown", False),
        ("completed", "exploded", "unknown", False),
        ("paused", "pending", "unknown", False),
        (None, None, "unknown", False),
        ("", "", "unknown", False),
        ("QUEUED", "pending", "unknown", False),
    ],
)
def test_display_status(
    status: str | None, outcome: str | None, display: str, active: bool
) -> None:
    assert rules.display_status(status, outcome) == display
    assert rules.is_active_run(rules.display_status(status, outcome)) is active


@pytest.mark.parametrize(
    ("age_seconds", "interval"),
    [
        (0.0, 1),
        (5.0, 1),
        (9.999, 1),
        (10.0, 5),
        (30.0, 5),
        (59.999, 5),
        (60.0, 10),
        (300.0, 10),
        (86_400.0, 10),
        (-5.0, 1),  # created "in the future" (clock skew): treat as fresh
    ],
)
def test_active_run_interval_by_age(age_seconds: float, interval: int) -> None:
    created = NOW - timedelta(seconds=age_seconds)
    assert rules.run_interval("running", created, NOW) == interval
    assert rules.run_interval("queued", created, NOW) == interval


@pytest.mark.parametrize(
    "display", ["succeeded", "partial", "failed", "blocked", "cancelled", "unknown"]
)
def test_terminal_or_unknown_run_has_no_more_reads(display: rules.DisplayStatus) -> None:
    assert rules.run_interval(display, NOW, NOW) is None


def test_active_run_without_created_at_is_read_at_the_slowest_rate() -> None:
    assert rules.run_interval("running", None, NOW) == 10


@pytest.mark.parametrize(
    ("status", "interval"),
    [
        ("queued", 10),
        ("generating", 10),
        ("ready", None),
        ("failed", None),
        ("expired", None),
        (None, None),  # no pack at all
        ("archived", None),  # unknown: nothing in progress to follow
    ],
)
def test_pack_interval(status: str | None, interval: int | None) -> None:
    assert rules.pack_interval(status) == interval
    assert rules.is_active_pack(status) is (interval is not None)


@pytest.mark.parametrize(
    ("intervals", "expected"),
    [
        ([], 10),
        ([None, None], 10),
        ([10], 10),
        ([10, 5], 5),
        ([10, 5, 1, None], 1),
    ],
)
def test_wall_interval(intervals: list[int | None], expected: int) -> None:
    assert rules.wall_interval(intervals) == expected


@pytest.mark.parametrize(
    ("raw", "counts", "progress"),
    [
        ({"total": 10, "processed": 4}, {"total": 10, "processed": 4}, 0.4),
        ({"total": 10, "processed": 10, "succeeded": 9, "failed": 1}, None, 1.0),
        ({"total": 10, "processed": 12}, None, 1.0),  # clamped
        ({"total": 0, "processed": 0}, None, None),
        ({"processed": 3}, {"processed": 3}, None),
        ({"total": 5}, {"total": 5}, None),
        ({"total": 4.0, "processed": 1.0}, {"total": 4, "processed": 1}, 0.25),
        ({"total": 4.5, "processed": 1}, {"processed": 1}, None),
        ({"total": "10", "processed": 2}, {"processed": 2}, None),
        ({"total": True, "processed": 1}, {"processed": 1}, None),
        ({"total": -3, "processed": 1}, {"processed": 1}, None),
        ({"total": 2, "processed": 1, "mystery": 7}, {"total": 2, "processed": 1}, 0.5),
        ({"skipped": 2}, {"skipped": 2}, None),
        ([], {}, None),
        (None, {}, None),
        ("oops", {}, None),
    ],
)
def test_summary_counts_and_progress(
    raw: object, counts: dict[str, int] | None, progress: float | None
) -> None:
    cleaned = rules.summary_counts(raw)
    if counts is not None:
        assert cleaned == counts
    assert rules.progress(cleaned) == progress


def test_failure_summary_keeps_only_well_formed_entries() -> None:
    raw = [
        {"code": "a", "message": "first", "count": 3},
        {"code": "b", "message": "no count"},
        {"code": "c", "message": "bad count", "count": "many"},
        {"code": 5, "message": "bad code"},
        {"message": "no code"},
        "not an object",
    ]
    assert rules.failure_summary(raw) == [
        {"code": "a", "message": "first", "count": 3},
        {"code": "b", "message": "no count"},
        {"code": "c", "message": "bad count"},
    ]
    assert rules.failure_summary({"code": "x"}) == []
    assert len(rules.failure_summary([{"code": "x", "message": "y"}] * 500)) == rules.MAX_FAILURES
