"""How the demo's simulators finish a run: the outcome and the failure reasons its counters
imply, so that what a page shows never contradicts itself ("Succeeded · 2 failed").

Pure functions of a run's `summary_counts`; the simulators (commands/demo.py,
attach/host_demo.py) decide only when a run stops.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

THROTTLED = {"code": "tenant.throttled", "message": "Graph API throttled"}
NO_CONSENT = {"code": "tenant.consent_missing", "message": "Admin consent is missing"}


def outcome_from_counts(counts: Mapping[str, Any]) -> str:
    """The outcome of a run that stopped with these counters; the first matching rule wins."""
    total = int(counts.get("total", 0))
    processed = int(counts.get("processed", 0))
    failed = int(counts.get("failed", 0))
    succeeded = int(counts.get("succeeded", processed - failed))
    if processed <= 0:
        return "blocked"  # nothing was done: it could not start
    if processed < total:
        return "cancelled"  # stopped before its end
    if failed <= 0:
        return "succeeded"
    if succeeded <= 0:
        return "failed"
    return "partially_succeeded"


def failure_reasons(outcome: str, counts: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The `failure_summary` that goes with them: a reason for the failed items, if any, and
    for a run that was blocked, why."""
    failed = int(counts.get("failed", 0))
    reasons: list[dict[str, Any]] = []
    if outcome == "blocked":
        reasons.append(dict(NO_CONSENT))
    if failed > 0:
        reasons.append({**THROTTLED, "count": failed})
    return reasons
