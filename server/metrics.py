"""`GET /metrics`: the engine's counters and the sockets' gauges, in Prometheus format.

A registry per application (no process-wide globals), filled at scrape time from
EngineStats, so the hot path never touches prometheus_client. It is for the operators'
network only; with OPSPUSH_METRICS_TOKEN set it also asks for that bearer token.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Iterator
from typing import get_args

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.registry import Collector

from .channels import Kind
from .protocol import ErrorCode
from .stats import EngineStats

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class EngineCollector(Collector):
    def __init__(self, stats: EngineStats, open_sockets: Callable[[], int]) -> None:
        self.stats = stats
        self.open_sockets = open_sockets

    def collect(self) -> Iterator[Metric]:
        s = self.stats
        kinds = [k.value for k in Kind]
        yield GaugeMetricFamily(
            "opspush_sockets_open", "Open WebSockets", value=self.open_sockets()
        )
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


def build_registry(stats: EngineStats, open_sockets: Callable[[], int]) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(EngineCollector(stats, open_sockets))
    return registry


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
