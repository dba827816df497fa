"""The open-file limit: every viewer's socket is a descriptor.

Distributions start services with a soft `RLIMIT_NOFILE` of 1024, which refuses sockets
past about a thousand viewers. `serve` raises the soft limit to the hard one at start-up
(any process may), and says how many sockets that leaves room for.
"""

from __future__ import annotations

import logging
import resource
from dataclasses import dataclass
from typing import Final

log = logging.getLogger("opspush.descriptors")

# Descriptors a process holds besides viewers' sockets: the pool and LISTEN connections, the
# listening socket, logs, the event loop's own, libraries'. Generous on purpose.
RESERVED: Final = 64
# Linux refuses a soft limit above fs.nr_open (1,048,576 by default) even when hard is
# unlimited; ask for no more than that.
NR_OPEN_DEFAULT: Final = 1_048_576


@dataclass(frozen=True, slots=True)
class Capacity:
    soft: int  # the limit in force after start-up
    hard: int
    raised_from: int | None  # the soft limit before, when it was raised

    @property
    def sockets(self) -> int:
        """Viewers' sockets this process can hold."""
        return max(0, self.soft - RESERVED)


def planned_soft_limit(soft: int, hard: int, nr_open: int = NR_OPEN_DEFAULT) -> int:
    """The soft limit to ask for: the hard one, bounded by what the kernel allows at all."""
    ceiling = nr_open if hard == resource.RLIM_INFINITY else min(hard, nr_open)
    if soft == resource.RLIM_INFINITY:
        return soft
    return max(soft, ceiling)


def shortfall(capacity: Capacity, workers: int, expected: int) -> str | None:
    """A warning when the whole service (every worker) holds fewer sockets than expected."""
    total = capacity.sockets * workers
    if expected and total < expected:
        return (
            f"the open-file limit leaves room for {total:,} sockets, below "
            f"OPSPUSH_EXPECTED_SOCKETS={expected:,}: raise the hard limit "
            "(ulimit -Hn, systemd LimitNOFILE=, compose ulimits.nofile)"
        )
    return None


def raise_limit() -> Capacity:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit; children inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = planned_soft_limit(soft, hard, _nr_open())
    if wanted == soft:
        return Capacity(soft, hard, None)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    except (ValueError, OSError) as error:
        log.warning("could not raise the open-file limit from %d to %d: %s", soft, wanted, error)
        return Capacity(soft, hard, None)
    return Capacity(wanted, hard, soft)


def report(capacity: Capacity, workers: int, expected: int) -> None:
    raised = f" (raised from {capacity.raised_from})" if capacity.raised_from else ""
    per = " per worker" if workers > 1 else ""
    log.info(
        "open-file limit %d%s, hard %d: room for %d sockets%s",
        capacity.soft,
        raised,
        capacity.hard,
        capacity.sockets,
        per,
    )
    warning = shortfall(capacity, workers, expected)
    if warning:
        log.warning("%s", warning)


def _nr_open() -> int:
    try:
        with open("/proc/sys/fs/nr_open") as file:
            return int(file.read())
    except (OSError, ValueError):
        return NR_OPEN_DEFAULT
