"""The engine's own counters: plain integers on the hot path, exported by `web/metrics.py`.

Tests read these directly ("50 viewers cost one read per due tick"); Prometheus reads
them at scrape time, so counting costs nothing more than an integer increment.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class EngineStats:
    reads: Counter[str] = field(default_factory=Counter)  # statements, by kind
    channel_reads: Counter[str] = field(default_factory=Counter)  # channels read, by kind
    states_pushed: Counter[str] = field(default_factory=Counter)
    states_replaced: int = 0  # a newer state replaced one the viewer had not been sent
    ends: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    subscriptions: Counter[str] = field(default_factory=Counter)
    channels: Counter[str] = field(default_factory=Counter)
    access_loads: int = 0
    read_errors: int = 0
    tick_lag_sum: float = 0.0
    tick_lag_count: int = 0
    tick_lag_max: float = 0.0

    def observe_lag(self, seconds: float) -> None:
        self.tick_lag_sum += seconds
        self.tick_lag_count += 1
        self.tick_lag_max = max(self.tick_lag_max, seconds)

    @property
    def total_reads(self) -> int:
        return sum(self.reads.values())
