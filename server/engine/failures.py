"""The log of reads that fail: a line when a failure starts, then at most one per interval
(core/retry.py), and a line when reads succeed again."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ..core.retry import REPORT_INTERVAL, report_due


@dataclass
class _Failing:
    since: float
    reported_at: float
    failures: int = 1
    unreported: int = 0


class FailureLog:
    def __init__(self, log: logging.Logger, what: str, interval: float = REPORT_INTERVAL) -> None:
        self.log = log
        self.what = what  # "database read", in "database read failed (access): ..."
        self.interval = interval
        self._failing: dict[str, _Failing] = {}

    @property
    def failing(self) -> bool:
        """Is any key failing now (its last attempt failed)?"""
        return bool(self._failing)

    def failed(self, key: str, error: BaseException, now: float) -> None:
        state = self._failing.get(key)
        if state is None:
            self._failing[key] = _Failing(since=now, reported_at=now)
            self.log.warning(
                "%s failed (%s): %s (while it keeps failing, reported at most every %g s)",
                self.what,
                key,
                error,
                self.interval,
            )
            return
        state.failures += 1
        state.unreported += 1
        if report_due(state.reported_at, now, self.interval):
            self.log.warning(
                "%s still failing (%s) after %.0f s: %s (%d attempts since the last report)",
                self.what,
                key,
                now - state.since,
                error,
                state.unreported,
            )
            state.reported_at, state.unreported = now, 0

    def succeeded(self, key: str, now: float) -> None:
        state = self._failing.pop(key, None)
        if state is not None:
            self.log.info(
                "%s recovered (%s) after %.0f s and %d failed attempts",
                self.what,
                key,
                now - state.since,
                state.failures,
            )
