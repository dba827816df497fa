"""`GET /metrics`: the engine's counters and the sockets' gauges, in Prometheus format.

A registry per application (no process-wide globals), filled at scrape time from
EngineStats, so the hot path never touches prometheus_client. It is for the operators'
network only; with OPSPUSH_METRICS_TOKEN set it also asks for that bearer token. With
several workers (`serve --workers N`) each publishes its figures to a shared folder and a
scrape of any worker sums them all (`SharedMetrics`), so one port shows the whole service.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hmac
import json
import os
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, get_args

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.registry import Collector

from ..core.channels import Kind
from ..core.protocol import ErrorCode
from ..engine.stats import EngineStats

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


Figures = tuple[EngineStats, int]  # the engine's counters, and the open sockets


class EngineCollector(Collector):
    def __init__(self, figures: Callable[[], Figures]) -> None:
        self.figures = figures

    def collect(self) -> Iterator[Metric]:
        s, open_sockets = self.figures()
        kinds = [k.value for k in Kind]
        yield GaugeMetricFamily("opspush_sockets_open", "Open WebSockets", value=open_sockets)
        yield _by("opspush_subscriptions", "Live subscriptions", "kind", kinds, s.subscriptions)
        yield _by("opspush_channels", "Watched channels", "kind", kinds, s.channels)
        yield _by("opspush_reads", "Batched read statements", "kind", kinds, s.reads, counter=True)
        yield _by(
            "opspush_channel_reads",
            "Channels read (a batch holds several)",
            "kind",
            kinds,
            s.channel_reads,
            counter=True,
        )
        batch = SummaryMetricFamily(
            "opspush_read_batch_size", "Channels per read statement", labels=["kind"]
        )
        for kind in kinds:
            batch.add_metric([kind], count_value=s.reads[kind], sum_value=s.channel_reads[kind])
        yield batch
        yield _by(
            "opspush_states_pushed",
            "State frames queued to viewers",
            "kind",
            kinds,
            s.states_pushed,
            counter=True,
        )
        yield CounterMetricFamily(
            "opspush_states_replaced",
            "States replaced by a newer one before a slow viewer was sent them",
            value=s.states_replaced,
        )
        reasons = ["terminal", "revoked", "gone"]
        yield _by("opspush_ends", "Subscriptions ended", "reason", reasons, s.ends, counter=True)
        codes = sorted(set(get_args(ErrorCode)) | set(s.errors))
        yield _by("opspush_errors", "Error frames sent", "code", codes, s.errors, counter=True)
        yield CounterMetricFamily(
            "opspush_access_loads", "Batched access-fact loads", value=s.access_loads
        )
        yield CounterMetricFamily(
            "opspush_read_errors", "Read statements that failed", value=s.read_errors
        )
        lag = SummaryMetricFamily("opspush_tick_lag_seconds", "How late due reads started")
        lag.add_metric([], count_value=s.tick_lag_count, sum_value=s.tick_lag_sum)
        yield lag
        yield GaugeMetricFamily(
            "opspush_tick_lag_max_seconds", "Largest tick lag seen", value=s.tick_lag_max
        )


def _by(
    name: str,
    documentation: str,
    label: str,
    values: list[str],
    counts: dict[str, int],
    *,
    counter: bool = False,
) -> Metric:
    family: GaugeMetricFamily | CounterMetricFamily
    if counter:
        family = CounterMetricFamily(name, documentation, labels=[label])
    else:
        family = GaugeMetricFamily(name, documentation, labels=[label])
    for value in values:
        family.add_metric([value], counts.get(value, 0))
    return family


def build_registry(
    stats: EngineStats, open_sockets: Callable[[], int], shared: SharedMetrics | None = None
) -> CollectorRegistry:
    def own() -> Figures:
        return stats, open_sockets()

    def whole_service() -> Figures:
        assert shared is not None
        shared.publish(*own())  # this worker's figures as of now, the others' as published
        return shared.collect()

    registry = CollectorRegistry(auto_describe=False)
    registry.register(EngineCollector(own if shared is None else whole_service))
    return registry


# Figures that describe the present (they are not summed over workers that have died).
_GAUGES = frozenset({"subscriptions", "channels", "tick_lag_max", "open_sockets"})
_RETIRED = "retired-"


class SharedMetrics:
    """The workers of one service, each publishing its figures as a file in one folder.

    A worker that died keeps its file, renamed by the supervisor (`retire`): its counters
    still count, so totals never go backwards; its gauges do not.
    """

    def __init__(self, folder: str, pid: int) -> None:
        self.folder = Path(folder)
        self.pid = pid

    def publish(self, stats: EngineStats, open_sockets: int) -> None:
        # Not dataclasses.asdict: it rebuilds a Counter from (key, count) pairs, counting pairs.
        figures: dict[str, Any] = {
            field.name: getattr(stats, field.name) for field in dataclasses.fields(stats)
        }
        figures["open_sockets"] = open_sockets
        path = self.folder / f"{self.pid}.json"
        scratch = path.with_suffix(".tmp")
        scratch.write_text(json.dumps(figures))
        os.replace(scratch, path)  # a reader sees the old file or the new one, never half

    def collect(self) -> Figures:
        return merge(self._read_all())

    def _read_all(self) -> Iterator[tuple[dict[str, Any], bool]]:
        for path in self.folder.glob("*.json"):
            with contextlib.suppress(OSError, ValueError):  # retired or replaced meanwhile
                yield json.loads(path.read_text()), not path.name.startswith(_RETIRED)

    @staticmethod
    def retire(folder: str, pid: int) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.replace(Path(folder) / f"{pid}.json", Path(folder) / f"{_RETIRED}{pid}.json")


def merge(snapshots: Iterator[tuple[dict[str, Any], bool]]) -> Figures:
    """Sum the workers' figures: counters over every worker, gauges over the live ones."""
    total = EngineStats()
    open_sockets = 0
    for figures, live in snapshots:
        for name, value in figures.items():
            if name in _GAUGES and not live:
                continue
            if name == "open_sockets":
                open_sockets += int(value)
            elif name == "tick_lag_max":
                total.tick_lag_max = max(total.tick_lag_max, float(value))
            elif isinstance(value, dict):
                getattr(total, name).update(Counter(value))
            elif hasattr(total, name):
                setattr(total, name, getattr(total, name) + value)
    return total, open_sockets


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)


def authorized(header: str | None, token: str | None) -> bool:
    """`Authorization: Bearer <token>` when OPSPUSH_METRICS_TOKEN is set (no token: open).

    Compared in constant time, so the answer's timing tells nothing about the token.
    """
    if token is None:
        return True
    scheme, _, given = (header or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        given.strip().encode(), token.encode()
    )
