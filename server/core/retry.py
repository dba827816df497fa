"""How reads that keep failing are retried and reported: pure functions of times and counts.

A database that fails every statement (down, or a table renamed away) must cost neither a busy
loop nor a log line per attempt: retries back off, doubling up to a ceiling, and a failure is
reported when it starts and then at most once per interval, with the count of the attempts
between, until a read succeeds again.
"""

from __future__ import annotations

from typing import Final

# A channel's read: retried after 1 s, 2 s, 4 s ... at most 10 s (its slowest interval).
READ_RETRY_FIRST: Final = 1.0
READ_RETRY_MAX: Final = 10.0
# An access load (a hello, a newcomer's facts): sooner, since someone is waiting.
ACCESS_RETRY_FIRST: Final = 0.25
# A failure that goes on is reported at most once per this many seconds.
REPORT_INTERVAL: Final = 10.0


def backoff(previous: float, first: float, ceiling: float) -> float:
    """The wait before the next attempt, after a failure that followed a wait of `previous`
    (0: the first failure after a success)."""
    return min(ceiling, max(first, previous * 2))


def report_due(reported_at: float | None, now: float, interval: float = REPORT_INTERVAL) -> bool:
    """Whether a failure at `now` is reported, the last report having been at `reported_at`
    (None: the failure just started)."""
    return reported_at is None or now - reported_at >= interval
