"""`serve --workers N`: N worker processes on one port, and the supervisor that owns them.

Each worker is a whole opspush process (its own engine, pool and LISTEN connection) with a
listening socket of its own on the shared port (SO_REUSEPORT): the kernel spreads new
connections over the workers, and one worker's death drops only its own sockets. The
supervisor reserves the port (bound, not listening, so it accepts nothing), starts the
workers, restarts one that dies (backing off if it keeps dying), and on SIGTERM or SIGINT
passes SIGTERM on, so that every worker drains its sockets with 1012, then exits 0.

Workers publish their counters to a shared folder that `/metrics` sums (see
`metrics.SharedMetrics`), so a scraper of the one port sees the whole service.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import socket
import tempfile
import time
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import Final

from ..config import Settings

log = logging.getLogger("opspush.supervisor")

MIN_RESTART_DELAY: Final = 0.5
MAX_RESTART_DELAY: Final = 30.0
STABLE_AFTER: Final = 30.0  # a worker that lived this long restarts at once if it dies
STOP_MARGIN: Final = 10.0  # beyond the drain, before stragglers are killed


def worker_count(requested: int) -> int:
    """`--workers`: 0 means one per core."""
    return requested if requested > 0 else (os.cpu_count() or 1)


def reuseport_socket(host: str, port: int) -> socket.socket:
    from .runner import bind

    return bind(host, port, reuse_port=True)


def reserve(host: str, port: int) -> socket.socket:
    """The supervisor's hold on the port; a ListenError (one line) if it is taken.

    A socket with SO_REUSEPORT may share a port another process's SO_REUSEPORT sockets
    listen on (another `serve --workers`): a plain bind first proves the port is free.
    """
    from .runner import bind

    probe = bind(host, port)
    try:
        port = probe.getsockname()[1]  # port 0: the free one picked, for everyone
    finally:
        probe.close()
    return reuseport_socket(host, port)


@dataclass
class _Slot:
    index: int
    process: BaseProcess | None = None
    started: float = 0.0
    restart_at: float = 0.0
    delay: float = MIN_RESTART_DELAY


class Supervisor:
    def __init__(
        self, settings: Settings, dsn: str, workers: int, reserved: socket.socket | None = None
    ) -> None:
        """`reserved`: the port, already reserved (`reserve`); else it is reserved in `run`."""
        self.settings = settings
        self.reserved = reserved
        self.dsn = dsn
        self.slots = [_Slot(index) for index in range(workers)]
        self._stopping = False
        self._context = multiprocessing.get_context("spawn")

    def run(self) -> int:
        reserved = self.reserved or reserve(self.settings.host, self.settings.port)
        # Port 0 picks a free port once, here; every worker then binds that one.
        settings = self.settings.with_overrides(port=reserved.getsockname()[1])
        metrics_dir = tempfile.mkdtemp(prefix="opspush-metrics-")
        previous = {
            sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)
        }
        try:
            log.info(
                "supervisor %d: %d workers on %s:%d",
                os.getpid(),
                len(self.slots),
                settings.host,
                settings.port,
            )
            while not self._stopping:
                now = time.monotonic()
                for slot in self.slots:
                    if slot.process is None and now >= slot.restart_at:
                        self._start(slot, settings, metrics_dir)
                self._reap(metrics_dir)
            self._stop_all()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            reserved.close()
            shutil.rmtree(metrics_dir, ignore_errors=True)
        return 0

    def _on_signal(self, sig: int, frame: FrameType | None) -> None:
        self._stopping = True

    def _start(self, slot: _Slot, settings: Settings, metrics_dir: str) -> None:
        process = self._context.Process(
            target=_worker_main,
            args=(settings, self.dsn, slot.index, metrics_dir),
            name=f"opspush-worker-{slot.index}",
        )
        process.start()
        slot.process, slot.started = process, time.monotonic()

    def _reap(self, metrics_dir: str) -> None:
        """Wait a little for a worker to end; schedule the restart of any that did."""
        live = {slot.process.sentinel: slot for slot in self.slots if slot.process is not None}
        for sentinel in multiprocessing.connection.wait(list(live), timeout=0.5):
            slot = live[sentinel]  # type: ignore[index]
            assert slot.process is not None
            process, slot.process = slot.process, None
            process.join()
            _retire(metrics_dir, process.pid)
            if self._stopping:
                continue
            now = time.monotonic()
            lived = now - slot.started
            slot.delay = MIN_RESTART_DELAY if lived > STABLE_AFTER else slot.delay
            slot.restart_at = now + slot.delay
            log.warning(
                "worker %d (pid %s) exited with %s after %.0f s; restarting in %.1f s",
                slot.index,
                process.pid,
                process.exitcode,
                lived,
                slot.delay,
            )
            slot.delay = min(MAX_RESTART_DELAY, slot.delay * 2)

    def _stop_all(self) -> None:
        """SIGTERM every worker (each drains with 1012), wait, then kill stragglers."""
        running = [slot.process for slot in self.slots if slot.process is not None]
        for process in running:
            process.terminate()
        deadline = time.monotonic() + self.settings.drain_seconds + STOP_MARGIN
        for process in running:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                log.warning("worker pid %s did not stop in time: killing it", process.pid)
                process.kill()
                process.join()


def _retire(metrics_dir: str, pid: int | None) -> None:
    """A dead worker's counters still count; its gauges (sockets, subscriptions) do not."""
    from ..web.metrics import SharedMetrics

    if pid is not None:
        SharedMetrics.retire(metrics_dir, pid)


def _worker_main(settings: Settings, dsn: str, index: int, metrics_dir: str) -> None:
    """A worker process: one whole opspush server on the shared port."""
    from ..web.metrics import SharedMetrics
    from .logs import configure_logging
    from .runner import serve_app

    configure_logging(settings.log_level)
    sock = reuseport_socket(settings.host, settings.port)
    shared = SharedMetrics(metrics_dir, os.getpid())
    try:
        serve_app(settings, dsn, sockets=[sock], worker=True, shared_metrics=shared)
    finally:
        sock.close()
