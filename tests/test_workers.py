"""`serve --workers N` and the open-file limit, as a user runs them: separate processes.

Which worker holds which connection is read from the kernel (psutil), and /metrics is
scraped through the one shared port, as Prometheus would.
"""

from __future__ import annotations

import asyncio
import os
import re
import resource
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx
import psutil
import pytest
import websockets

from opspush.commands import descriptors
from opspush.commands.descriptors import Capacity, planned_soft_limit, shortfall
from opspush.web.metrics import merge
from tests.conftest import SECRET, Viewer, free_socket
from tests.factories import Factory
from tests.test_processes import connect

INF = resource.RLIM_INFINITY


@pytest.mark.parametrize(
    ("soft", "hard", "nr_open", "wanted"),
    [
        (1024, 4096, 1_048_576, 4096),  # the usual case: up to the hard limit
        (1024, 1024, 1_048_576, 1024),  # nothing to raise
        (1024, INF, 1_048_576, 1_048_576),  # unlimited hard: the kernel's ceiling
        (1024, 2_000_000, 1_048_576, 1_048_576),  # above the kernel's ceiling
        (8192, 4096, 1_048_576, 8192),  # never lowered
        (INF, INF, 1_048_576, INF),  # already unlimited
    ],
)
def test_planned_soft_limit(soft: int, hard: int, nr_open: int, wanted: int) -> None:
    assert planned_soft_limit(soft, hard, nr_open) == wanted


@pytest.mark.parametrize(
    ("soft", "workers", "expected", "warned"),
    [
        (1024, 1, 10_000, True),  # a distribution's default: about a thousand viewers
        (65_536, 1, 10_000, False),
        (8192, 2, 10_000, False),  # 2 workers x 8,128
        (8192, 2, 16_256, False),
        (8192, 2, 16_257, True),
        (8192, 1, 10_000, True),
        (1024, 1, 0, False),  # no expectation set
    ],
)
def test_shortfall(soft: int, workers: int, expected: int, warned: bool) -> None:
    warning = shortfall(Capacity(soft, soft, None), workers, expected)
    assert (warning is not None) == warned
    if warning:
        assert "OPSPUSH_EXPECTED_SOCKETS" in warning


@dataclass
class Service:
    process: asyncio.subprocess.Process
    port: int
    log: list[str]

    def workers(self) -> list[psutil.Process]:
        children = psutil.Process(self.process.pid).children()
        return [c for c in children if "resource_tracker" not in " ".join(c.cmdline())]

    def connections_by_worker(self) -> dict[int, int]:
        return {
            worker.pid: sum(
                1
                for c in worker.net_connections("tcp")
                if c.status == psutil.CONN_ESTABLISHED and c.laddr.port == self.port
            )
            for worker in self.workers()
        }

    async def metrics(self) -> dict[str, float]:
        async with httpx.AsyncClient() as client:
            response = await client.get(f"http://127.0.0.1:{self.port}/metrics")
        assert response.status_code == 200, response.text
        text = response.text
        return {
            name: float(value)
            for name, value in re.findall(r"^(opspush_\S+) (\S+)$", text, re.MULTILINE)
        }

    async def metrics_until(self, predicate: object, timeout: float = 15.0) -> dict[str, float]:
        """Scrape until the figures satisfy `predicate` (each worker publishes once a second)."""
        assert callable(predicate)
        async with asyncio.timeout(timeout):
            while True:
                figures = await self.metrics()
                if predicate(figures):
                    return figures
                await asyncio.sleep(0.2)


@asynccontextmanager
async def serve(dsn: str, *args: str, preexec: object = None, **env: str) -> AsyncIterator[Service]:
    """`opspush serve ARGS` in its own process, stopped with SIGTERM at the end."""
    sock = free_socket()
    port = sock.getsockname()[1]
    sock.close()
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OPSPUSH_")}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "opspush.commands.cli", "serve", "--port", str(port), *args,
        env={**clean, "DATABASE_URL": dsn, "OPSPUSH_SECRET": SECRET, "OPSPUSH_NOTIFY": "1",
             "OPSPUSH_LOG_LEVEL": "info", "OPSPUSH_DRAIN_SECONDS": "3", **env},
        stderr=asyncio.subprocess.PIPE,
        preexec_fn=preexec,  # type: ignore[arg-type]
    )  # fmt: skip
    assert process.stderr is not None
    log: list[str] = []
    workers = int(args[args.index("--workers") + 1]) if "--workers" in args else 1
    try:
        async with asyncio.timeout(60):
            while sum("Application startup complete" in line for line in log) < workers:
                line = (await process.stderr.readline()).decode()
                assert line, f"opspush serve ended: {log}"
                log.append(line)
        yield Service(process, port, log)
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(30):
                    await process.wait()
            except TimeoutError:
                process.kill()
                await process.wait()


async def subscribed(port: int, user: int, ch: str, count: int) -> list[Viewer]:
    viewers = [await connect(port, user) for _ in range(count)]
    for viewer in viewers:
        assert (await viewer.subscribe(ch))["type"] == "state"
    return viewers


async def test_workers_share_one_port_each_reads_and_metrics_show_the_whole(
    database_dsn: str, db: Factory
) -> None:
    ws = await db.workspace()
    user = await db.user(ws, "owner")
    run = await db.run(ws, status="running")
    async with serve(database_dsn, "--workers", "2") as service:
        assert len(service.workers()) == 2
        viewers = await subscribed(service.port, user, f"run:{run}", 24)
        try:
            by_worker = service.connections_by_worker()
            assert sum(by_worker.values()) == 24
            assert all(count > 0 for count in by_worker.values()), by_worker  # spread by the kernel
            figures = await service.metrics_until(
                lambda f: (
                    f["opspush_sockets_open"] == 24 and f['opspush_subscriptions{kind="run"}'] == 24
                )
            )
            # Each worker watches the run once for all of its own viewers.
            assert figures['opspush_channels{kind="run"}'] == 2
            # Each worker listens for notifications of its own: every viewer hears the change.
            await db.update_run(run, summary_counts={"total": 4, "processed": 1})
            for viewer in viewers:
                frame = await viewer.until(lambda f: f["type"] == "state")
                assert frame["data"]["progress"] == 0.25
        finally:
            for viewer in viewers:
                await viewer.close()


async def test_a_dead_worker_is_restarted_and_totals_never_go_back(
    database_dsn: str, db: Factory
) -> None:
    ws = await db.workspace()
    user = await db.user(ws, "owner")
    run = await db.run(ws, status="running")
    async with serve(database_dsn, "--workers", "2") as service:
        viewers = await subscribed(service.port, user, f"run:{run}", 16)
        before = await service.metrics_until(lambda f: f["opspush_sockets_open"] == 16)
        by_worker = service.connections_by_worker()
        victim = max(by_worker, key=lambda pid: by_worker[pid])
        held = {c.raddr.port for c in psutil.Process(victim).net_connections("tcp") if c.raddr}
        doomed = [v for v in viewers if v.connection.local_address[1] in held]
        survivors = [v for v in viewers if v not in doomed]
        assert len(doomed) == by_worker[victim] and survivors
        os.kill(victim, signal.SIGKILL)
        assert {await v.closed() for v in doomed} == {1006}  # no close frame from the dead
        # The other worker's viewers never noticed: they still hear changes.
        await db.update_run(run, summary_counts={"total": 4, "processed": 3})
        for viewer in survivors:
            frame = await viewer.until(lambda f: f["type"] == "state")
            assert frame["data"]["progress"] == 0.75
        async with asyncio.timeout(30):  # the supervisor starts a new worker in its place
            # Another process's children: nothing to wait on but their list.
            while len(pids := {w.pid for w in service.workers()}) != 2 or victim in pids:  # noqa: ASYNC110
                await asyncio.sleep(0.1)
        assert any("worker" in line and "restarting" in line for line in await _more(service))
        again = await subscribed(service.port, user, f"run:{run}", 4)
        open_now = len(survivors) + len(again)
        after = await service.metrics_until(lambda f: f["opspush_sockets_open"] == open_now)
        # The dead worker's counters still count; its sockets no longer do.
        for name in ("opspush_reads_total", "opspush_states_pushed_total"):
            key = f'{name}{{kind="run"}}'
            assert after[key] >= before[key], name
        for viewer in survivors + again:
            await viewer.close()


async def _more(service: Service) -> list[str]:
    """Log lines that arrived since start-up (what is buffered, without waiting for more)."""
    assert service.process.stderr is not None
    while True:
        try:
            async with asyncio.timeout(0.5):
                line = (await service.process.stderr.readline()).decode()
        except TimeoutError:
            return service.log
        if not line:
            return service.log
        service.log.append(line)


async def test_sigterm_drains_every_worker_with_1012_and_exits_0(
    database_dsn: str, db: Factory
) -> None:
    ws = await db.workspace()
    user = await db.user(ws, "owner")
    async with serve(database_dsn, "--workers", "2") as service:
        viewers = await subscribed(service.port, user, f"operations:{ws}", 12)
        assert all(count > 0 for count in service.connections_by_worker().values())
        workers = service.workers()
        service.process.send_signal(signal.SIGTERM)
        codes = await asyncio.gather(*(viewer.closed() for viewer in viewers))
        assert set(codes) == {1012}
        async with asyncio.timeout(30):
            assert await service.process.wait() == 0
        assert not any(worker.is_running() for worker in workers)
        with pytest.raises((OSError, websockets.InvalidHandshake, TimeoutError)):
            await websockets.connect(f"ws://127.0.0.1:{service.port}/ws", open_timeout=2)


def _low_descriptor_limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 4096))


async def test_serve_raises_a_distribution_default_limit_and_warns_below_expectations(
    database_dsn: str,
) -> None:
    async with serve(
        database_dsn, preexec=_low_descriptor_limit, OPSPUSH_EXPECTED_SOCKETS="20000"
    ) as service:
        soft, hard = psutil.Process(service.process.pid).rlimit(psutil.RLIMIT_NOFILE)
        assert (soft, hard) == (4096, 4096)
        text = "".join(service.log)
        assert "open-file limit 4096 (raised from 1024), hard 4096" in text
        assert f"room for {4096 - descriptors.RESERVED} sockets" in text
        assert "WARNING" in text and "OPSPUSH_EXPECTED_SOCKETS=20,000" in text


def test_merge_sums_counters_of_every_worker_and_gauges_of_live_ones() -> None:
    live = {
        "reads": {"run": 5},
        "subscriptions": {"run": 3},
        "access_loads": 2,
        "tick_lag_max": 0.5,
        "open_sockets": 3,
    }
    other = {
        "reads": {"run": 1, "operations": 4},
        "subscriptions": {"run": 2},
        "access_loads": 1,
        "tick_lag_max": 0.25,
        "open_sockets": 2,
    }
    retired = {
        "reads": {"run": 7},
        "subscriptions": {"run": 9},
        "access_loads": 10,
        "tick_lag_max": 9.0,
        "open_sockets": 9,
    }
    stats, open_sockets = merge(iter([(live, True), (other, True), (retired, False)]))
    assert stats.reads == {"run": 13, "operations": 4}  # counters: the dead's too
    assert stats.access_loads == 13
    assert stats.subscriptions == {"run": 5}  # gauges: the living only
    assert stats.tick_lag_max == 0.5
    assert open_sockets == 5
