"""When each watched channel is read next: a heap of due times on a shared grid.

A watch's `next_due` is the truth; a heap entry that no longer matches it (the watch was
rescheduled, ended or dropped since) is stale and skipped. Due times are rounded up onto a
grid shared by every channel, so that channels due about together are read in one statement.
Nothing here reads a clock: callers pass `now`.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Mapping

from ..core.channels import Channel
from .watch import Watch


class Schedule:
    def __init__(self, grid: float) -> None:
        self.grid = grid
        self._heap: list[tuple[float, int, Channel]] = []
        self._seq = 0  # ties broken by insertion order, never by comparing channels

    def on_grid(self, when: float) -> float:
        """Round up onto the shared grid, so channels due about together are read together."""
        return math.ceil(when / self.grid - 1e-9) * self.grid

    def put(self, watch: Watch, when: float) -> None:
        watch.next_due = when
        self._seq += 1
        heapq.heappush(self._heap, (when, self._seq, watch.channel))

    def after_read(self, watch: Watch, read_at: float, interval: int) -> None:
        """Due `interval` after the read was due, on the grid; counted from the read itself
        when it was a grid step or more late, or was read before it was due."""
        base = watch.next_due if watch.next_due is not None else read_at
        if read_at - base >= self.grid or base > read_at:
            base = read_at
        self.put(watch, self.on_grid(base + interval))

    def next_due(self, watches: Mapping[Channel, Watch]) -> float | None:
        """The earliest due time of a live entry, if any (stale entries on top are dropped)."""
        while self._heap:
            when, _, channel = self._heap[0]
            if _is_live(watches, channel, when):
                return when
            heapq.heappop(self._heap)
        return None

    def pop_due(self, now: float, watches: Mapping[Channel, Watch]) -> list[tuple[Watch, float]]:
        """Take every live entry due by `now`: each watch with the time it was due."""
        due = []
        while self._heap and self._heap[0][0] <= now:
            when, _, channel = heapq.heappop(self._heap)
            if _is_live(watches, channel, when):
                due.append((watches[channel], when))
        return due


def _is_live(watches: Mapping[Channel, Watch], channel: Channel, when: float) -> bool:
    watch = watches.get(channel)
    return watch is not None and watch.next_due == when
