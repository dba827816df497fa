"""Run every scenario: push (ticks only, with notifications) against polling, same machine.

For each (viewers, mode): seed the workspace afresh, start opspush in its own process
pinned to its own CPU, start the writer and the load clients (pinned to the other CPUs),
wait until every viewer has its first state, warm up, measure for `--duration` seconds,
wait `--grace` seconds so that changes committed late in the window can still arrive, then
collect: database statements/s (pg_stat_statements, the writer's own left out), server CPU
and memory, states pushed and replaced (/metrics), commit-to-viewer latency, client CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import resource
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from array import array
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import psutil

from bench.common import (
    PUSHER_APP_ID,
    PUSHER_KEY,
    PUSHER_SECRET,
    SECRET,
    WRITER_MARK,
    free_port,
    log,
    parse_cpus,
    pin,
    raise_fd_limit,
)

ROOT = Path(__file__).resolve().parent.parent
BENCH_DB = "opspush_bench"
CLIENT_SOCKETS = 15_000  # at most this many viewers per load client process
MODES = ("ticks", "notify", "pusher", "poll")


# -- the database --------------------------------------------------------------------------


@contextlib.contextmanager
def postgres(work: Path) -> Any:
    url = os.environ.get("DATABASE_URL")
    if url:
        yield url, None
        return
    from opspush.database import embedded

    data = work / f"pgdata-{os.getpid()}"
    if data.exists():
        shutil.rmtree(data)
    server = embedded.start(data, delete_on_stop=True)
    try:
        yield server.dsn, server
    finally:
        server.stop()


async def prepare_database(admin_dsn: str) -> str:
    from opspush.database.migrations import create_database

    return await create_database(admin_dsn, BENCH_DB, replace=True)


async def seed(dsn: str, args: argparse.Namespace, viewers: int) -> dict[str, Any]:
    """One workspace; runs = viewers / runs_ratio, most past the 60 s mark; users; packs."""
    rng = random.Random(viewers)
    runs = max(1, viewers // args.viewers_per_run)
    n_users = max(2, viewers // args.viewers_per_user)
    n_tenants = args.tenants
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute("TRUNCATE workspaces, users RESTART IDENTITY CASCADE")
        workspace = await connection.fetchval(
            "INSERT INTO workspaces (name) VALUES ('bench') RETURNING id"
        )
        tenants = [
            r["id"]
            for r in await connection.fetch(
                "INSERT INTO tenants (workspace_id, name) "
                "SELECT $1, 'tenant ' || g FROM generate_series(1, $2) g RETURNING id",
                workspace,
                n_tenants,
            )
        ]
        users = [
            r["id"]
            for r in await connection.fetch(
                "INSERT INTO users (name, email) SELECT 'user ' || g, 'u' || g || '@bench' "
                "FROM generate_series(1, $1) g RETURNING id",
                n_users,
            )
        ]
        # Most are owners; every fifth an operator entitled to every tenant (real decisions).
        roles = ["operator" if i % 5 == 4 else "owner" for i in range(n_users)]
        await connection.executemany(
            "INSERT INTO workspace_memberships (workspace_id, user_id, role) VALUES ($1, $2, $3)",
            [(workspace, u, role) for u, role in zip(users, roles, strict=True)],
        )
        operators = [u for u, role in zip(users, roles, strict=True) if role == "operator"]
        await connection.execute(
            "INSERT INTO tenant_entitlements (tenant_id, user_id) "
            "SELECT t, u FROM unnest($1::bigint[]) t, unnest($2::bigint[]) u",
            tenants,
            operators,
        )
        now = datetime.now(UTC)
        epoch = time.time()
        rows = []
        for slot in range(runs):
            age = rng.uniform(0, args.run_life)  # ages spread evenly: ~10 % under 60 s
            ends = epoch + rng.uniform(0, args.run_life)
            rows.append((slot, tenants[slot % n_tenants], now - timedelta(seconds=age), ends))
        await connection.execute(
            """INSERT INTO operation_runs (workspace_id, tenant_id, type, status, outcome, context,
                   summary_counts, created_at, started_at)
               SELECT $1, t, 'inventory.sync', 'running', 'pending',
                      jsonb_build_object('slot', s, 'end', e),
                      '{"total": 100000, "processed": 0, "succeeded": 0, "failed": 0}'::jsonb,
                      c, c
               FROM unnest($2::bigint[], $3::bigint[], $4::timestamptz[], $5::float8[])
                    AS x(s, t, c, e)""",
            workspace,
            [r[0] for r in rows],
            [r[1] for r in rows],
            [r[2] for r in rows],
            [r[3] for r in rows],
        )
        await connection.execute(
            """INSERT INTO review_packs (workspace_id, tenant_id, initiated_by_user_id, status,
                   summary)
               SELECT $1, t, $3, 'generating', '{"seq": 0}'::jsonb FROM unnest($2::bigint[]) t""",
            workspace,
            tenants,
            users[0],
        )
        await connection.execute("ANALYZE")
    finally:
        await connection.close()
    pack_every = round(1 / args.pack_share) if args.pack_share > 0 else 0
    plan_viewers = []
    for i in range(viewers):
        user = users[i % n_users]
        if pack_every and i % pack_every == pack_every - 1:
            plan_viewers.append((user, "pack", tenants[i % n_tenants]))
        else:
            plan_viewers.append((user, "run", i % runs))
    return {"runs": runs, "users": n_users, "tenants": n_tenants, "viewers": plan_viewers}


async def db_counts(dsn: str) -> dict[str, Any]:
    """Statements executed in the bench database so far, per statement; the writer's apart."""
    connection = await asyncpg.connect(dsn)
    try:
        try:
            rows = await connection.fetch(
                """SELECT queryid, left(regexp_replace(query, '\\s+', ' ', 'g'), 90) AS query,
                          sum(calls) AS calls, query LIKE $1 AS writer
                   FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid
                   WHERE d.datname = current_database()
                     AND query NOT LIKE '%pg_stat_statements%'
                   GROUP BY 1, 2, 4""",
                f"%{WRITER_MARK}%",
            )
            per = {(r["queryid"], r["query"]): float(r["calls"]) for r in rows if not r["writer"]}
            return {
                "service": sum(per.values()),
                "writer": sum(float(r["calls"]) for r in rows if r["writer"]),
                "per": per,
                "source": 1.0,
            }
        except asyncpg.PostgresError:
            row = await connection.fetchrow(
                "SELECT xact_commit + xact_rollback AS n FROM pg_stat_database "
                "WHERE datname = current_database()"
            )
            return {"service": float(row["n"]), "writer": 0.0, "per": {}, "source": 0.0}
    finally:
        await connection.close()


def top_statements(before: dict[str, Any], after: dict[str, Any], seconds: float) -> list[Any]:
    rates = []
    for key, calls in after["per"].items():
        diff = calls - before["per"].get(key, 0.0)
        if diff > 0:
            rates.append((round(diff / seconds, 2), key[1]))
    return sorted(rates, reverse=True)[:6]


def metrics(port: int) -> dict[str, float]:
    totals: dict[str, float] = {}
    text = ""
    for _ in range(3):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=20) as answer:
                text = answer.read().decode()
            break
        except OSError as error:
            log(f"  /metrics did not answer: {error!r}")
            continue
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name_labels, _, value = line.rpartition(" ")
        name = name_labels.split("{", 1)[0]
        with contextlib.suppress(ValueError):
            totals[name] = totals.get(name, 0.0) + float(value)
    return totals


class ServerTree:
    """`opspush serve`: one process, or a supervisor and its workers, measured as a whole."""

    def __init__(self, pid: int, workers: int) -> None:
        self.root = psutil.Process(pid)
        self.workers = workers

    def processes(self) -> list[psutil.Process]:
        with contextlib.suppress(psutil.Error):
            return [self.root, *self.root.children(recursive=True)]
        return [self.root]

    async def wait_workers(self) -> None:
        """Until every worker is up (the supervisor starts them after it answers)."""
        deadline = time.monotonic() + 60
        while self.workers > 1 and len(self.processes()) < self.workers + 1:
            if time.monotonic() > deadline:
                raise RuntimeError("the workers did not start")
            await asyncio.sleep(0.2)

    def rss(self) -> int:
        total = 0
        for process in self.processes():
            with contextlib.suppress(psutil.Error):
                total += process.memory_info().rss
        return total

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.processes())

    def fd_limit(self) -> int | None:
        with contextlib.suppress(psutil.Error, AttributeError):
            return int(self.processes()[-1].rlimit(psutil.RLIMIT_NOFILE)[0])
        return None


def workers_for(args: argparse.Namespace, viewers: int) -> int:
    """`--workers` for this many viewers: the spec's, or more when one process's descriptor
    limit cannot hold its share (SO_REUSEPORT spreads connections evenly, not exactly)."""
    chosen = 1
    for part in args.workers.split(","):
        if "=" in part:
            at, count = part.split("=")
            if viewers >= int(at):
                chosen = int(count)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    per_process = int(0.75 * hard)
    return max(chosen, -(-viewers // per_process))


def cpu_seconds(processes: list[psutil.Process]) -> float:
    return sum(cpu_by_pid(processes).values())


def busy(before: Any, after: Any) -> float:
    idle = (after.idle - before.idle) + (getattr(after, "iowait", 0) - getattr(before, "iowait", 0))
    return sum(after) - sum(before) - idle


def cpu_by_pid(processes: list[psutil.Process]) -> dict[int, float]:
    found = {}
    for process in processes:
        with contextlib.suppress(psutil.Error):
            times = process.cpu_times()
            found[process.pid] = times.user + times.system
    return found


def cpu_delta(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU used by the processes alive at both ends (short-lived ones are left out)."""
    return sum(after[pid] - before[pid] for pid in after.keys() & before.keys())


def postgres_processes(embedded: Any) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["name"]):
        with contextlib.suppress(psutil.Error):
            if process.info["name"] and process.info["name"].startswith("postgres"):
                found.append(process)
    return found


# -- one scenario --------------------------------------------------------------------------


class Scenario:
    def __init__(self, args: argparse.Namespace, dsn: str, work: Path, mode: str, n: int):
        self.args = args
        self.dsn = dsn
        self.work = work
        self.mode = mode
        self.n = n
        self.port = free_port()
        self.procs: list[subprocess.Popen[str]] = []

    def spawn(
        self, argv: list[str], env: dict[str, str] | None = None, stdin: bool = False
    ) -> subprocess.Popen[str]:
        process = subprocess.Popen(
            [sys.executable, *argv],
            cwd=ROOT,
            env=env or os.environ.copy(),
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.procs.append(process)
        return process

    def stop_all(self) -> None:
        for process in reversed(self.procs):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in reversed(self.procs):
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    async def run(self) -> dict[str, Any]:
        args = self.args
        seeded = await seed(self.dsn, args, self.n)
        writes = self.work / "writes.log"
        slots = self.work / "slots.json"
        for path in (writes, slots):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        plan = {
            "mode": self.mode,
            "port": self.port,
            "slots": str(slots),
            "writes": str(writes),
            "viewers": seeded["viewers"],
            "stagger": max(5.0, self.n / 2000),
            "ready_timeout": args.ready_timeout,
        }
        plan_path = self.work / "plan.json"
        plan_path.write_text(json.dumps(plan))
        env = os.environ.copy()
        env.update(
            DATABASE_URL=self.dsn,
            OPSPUSH_SECRET=SECRET,
            OPSPUSH_NOTIFY="1" if self.mode in ("notify", "pusher") else "0",
            OPSPUSH_MAX_CONNECTIONS_PER_USER="0",
            OPSPUSH_MAX_CONNECTIONS_PER_ADDRESS="0",
            OPSPUSH_ADMISSION_RATE="0",  # the load connects all at once, on purpose
            OPSPUSH_RATE_LIMIT="20",
            OPSPUSH_LOG_LEVEL="warning",
        )
        if self.mode == "pusher":
            env.update(
                OPSPUSH_PUSHER_APP_ID=PUSHER_APP_ID,
                OPSPUSH_PUSHER_KEY=PUSHER_KEY,
                OPSPUSH_PUSHER_SECRET=PUSHER_SECRET,
            )
        pool = args.poll_pool_size if self.mode == "poll" else args.pool_size
        if pool:
            env["OPSPUSH_POOL_SIZE"] = str(pool)
        workers = workers_for(args, self.n)
        # Two or more workers are there to use every core: they are not pinned to one.
        server_cpus = args.server_cpus if workers == 1 else ""
        if workers > 1:
            log(f"  opspush serve --workers {workers}")
        try:
            server = self.spawn(
                [
                    "-m",
                    "bench.serve",
                    "--cpus",
                    server_cpus,
                    "--port",
                    str(self.port),
                    "--workers",
                    str(workers),
                ],
                env,
            )
            await self.wait_healthy(server)
            server_ps = ServerTree(server.pid, workers)
            await server_ps.wait_workers()
            await asyncio.sleep(1.0)
            rss_base = server_ps.rss()
            fd_limit = server_ps.fd_limit()
            if fd_limit is not None and fd_limit * workers < self.n + 100 * workers:
                log(f"  the server may open only {fd_limit} files per process: too few")
            writer = self.spawn(
                [
                    "-m",
                    "bench.writer",
                    "--dsn",
                    self.dsn,
                    "--log",
                    str(writes),
                    "--slots",
                    str(slots),
                    "--batches",
                    str(args.writer_batches),
                    "--cpus",
                    args.client_cpus,
                ]
            )
            assert writer.stdout is not None
            line = await asyncio.to_thread(writer.stdout.readline)
            if "ready" not in line:
                raise RuntimeError("the writer did not start")
            clients = []
            # Each client process stays well inside its own descriptor limit.
            k = max(1, min(max(args.clients, -(-self.n // CLIENT_SOCKETS)), self.n))
            started = time.monotonic()
            for index in range(k):
                clients.append(
                    self.spawn(
                        [
                            "-m",
                            "bench.client",
                            "--plan",
                            str(plan_path),
                            "--index",
                            str(index),
                            "--of",
                            str(k),
                            "--out",
                            str(self.work / f"lat-{index}.bin"),
                            "--cpus",
                            args.client_cpus,
                        ],
                        stdin=True,
                    )
                )
            readies = await asyncio.gather(
                *(asyncio.to_thread(c.stdout.readline) for c in clients)  # type: ignore[union-attr]
            )
            ready = sum(json.loads(r)["ready"] for r in readies if r.strip())
            ramp = time.monotonic() - started
            log(f"  {ready}/{self.n} viewers have their first state after {ramp:.1f} s")
            rss_loaded = server_ps.rss()
            await asyncio.sleep(args.warmup)

            watched = [psutil.Process(c.pid) for c in clients]
            writer_ps = psutil.Process(writer.pid)
            pg = postgres_processes(None)
            db0 = await db_counts(self.dsn)
            m0 = await asyncio.to_thread(metrics, self.port)
            cpu0 = (
                server_ps.cpu_seconds(),
                cpu_seconds(watched),
                cpu_seconds([writer_ps]),
                cpu_by_pid(pg),
            )
            sys0 = psutil.cpu_times()
            t0 = time.time()
            rss_samples = []
            end = time.monotonic() + args.duration
            while time.monotonic() < end:
                await asyncio.sleep(min(1.0, max(0.0, end - time.monotonic())))
                rss_samples.append(server_ps.rss())
            t1 = time.time()
            sys1 = psutil.cpu_times()
            cpu1 = (
                server_ps.cpu_seconds(),
                cpu_seconds(watched),
                cpu_seconds([writer_ps]),
                cpu_by_pid(pg),
            )
            db1 = await db_counts(self.dsn)
            m1 = await asyncio.to_thread(metrics, self.port)
            elapsed = t1 - t0
            await asyncio.sleep(args.grace)
            for client in clients:
                assert client.stdin is not None
                client.stdin.write(f"stop {t0} {t1}\n")
                client.stdin.flush()
            summaries = [
                json.loads(s)
                for s in await asyncio.gather(
                    *(asyncio.to_thread(c.stdout.readline) for c in clients)  # type: ignore[union-attr]
                )
                if s.strip()
            ]
        finally:
            self.stop_all()
        samples = array("d")
        for index in range(k):
            path = self.work / f"lat-{index}.bin"
            if path.exists():
                data = path.read_bytes()
                samples.frombytes(data)
        lat = sorted(samples)

        def pct(p: float) -> float | None:
            if not lat:
                return None
            return 1000.0 * lat[min(len(lat) - 1, int(p / 100.0 * len(lat)))]

        def delta(name: str) -> float:
            return (m1.get(name, 0.0) - m0.get(name, 0.0)) / elapsed

        errors: dict[str, int] = {}
        closes: dict[str, int] = {}
        for s in summaries:
            for key, value in s["errors"].items():
                errors[key] = errors.get(key, 0) + value
            for key, value in s["closes"].items():
                closes[key] = closes.get(key, 0) + value
        result = {
            "mode": self.mode,
            "viewers": self.n,
            "workers": workers,
            "runs": seeded["runs"],
            "users": seeded["users"],
            "ready": ready,
            "ramp_seconds": round(ramp, 1),
            "seconds": round(elapsed, 1),
            "db_statements_per_s": (db1["service"] - db0["service"]) / elapsed,
            "db_source": "pg_stat_statements" if db1["source"] else "pg_stat_database",
            "writer_statements_per_s": (db1["writer"] - db0["writer"]) / elapsed,
            "server_cpu": (cpu1[0] - cpu0[0]) / elapsed,
            "client_cpu": (cpu1[1] - cpu0[1]) / elapsed,
            "writer_cpu": (cpu1[2] - cpu0[2]) / elapsed,
            "postgres_cpu": cpu_delta(cpu0[3], cpu1[3]) / elapsed,
            "top_statements": top_statements(db0, db1, elapsed),
            # Everything the machine did in the window, ours included: other work on a shared
            # machine shows up as machine_cpu well above the sum of the parts above.
            "machine_cpu": busy(sys0, sys1) / elapsed,
            "server_rss_base_mb": rss_base / 2**20,
            "server_rss_mb": max(rss_samples or [rss_loaded]) / 2**20,
            "kb_per_socket": (
                (rss_loaded - rss_base) / 1024 / self.n if self.mode != "poll" else None
            ),
            "states_pushed_per_s": delta("opspush_states_pushed_total"),
            "states_replaced_per_s": delta("opspush_states_replaced_total"),
            "engine_reads_per_s": delta("opspush_reads_total"),
            "channel_reads_per_s": delta("opspush_channel_reads_total"),
            "tick_lag_max_s": m1.get("opspush_tick_lag_max_seconds"),
            "states_received_per_s": sum(s["states"] for s in summaries) / max(elapsed, 1e-9),
            "http_requests_per_s": sum(s["requests"] for s in summaries) / elapsed,
            "http_offered_per_s": sum(s.get("offered_per_s", 0.0) for s in summaries),
            "latency_samples": len(lat),
            "latency_missed": sum(s["missed"] for s in summaries),
            "p50_ms": pct(50),
            "p95_ms": pct(95),
            "p99_ms": pct(99),
            "max_ms": 1000.0 * lat[-1] if lat else None,
            "errors": errors,
            "closes": closes,
            "connect_failures": sum(s["failures"] for s in summaries),
        }
        return result

    async def wait_healthy(self, server: subprocess.Popen[str]) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if server.poll() is not None:
                raise RuntimeError(f"the server exited with {server.returncode}")
            try:
                await asyncio.to_thread(
                    urllib.request.urlopen, f"http://127.0.0.1:{self.port}/healthz", timeout=1
                )
                return
            except OSError:
                await asyncio.sleep(0.2)
        raise RuntimeError("the server did not become healthy")


# -- everything ----------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    cpu = platform.processor() or ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


async def main_async(args: argparse.Namespace) -> int:
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240  # a harness, not the server
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240  # a harness, not the server
    modes = [m for m in args.modes.split(",") if m]
    sizes = [int(s) for s in args.scenarios.split(",") if s]
    results: list[dict[str, Any]] = []
    began = time.time()
    with postgres(work) as (admin_dsn, embedded):
        dsn = await prepare_database(admin_dsn)
        log(f"database ready ({'embedded' if embedded else 'DATABASE_URL'})")
        for n in sizes:
            for mode in modes:
                log(f"scenario: {n} viewers, {mode}")
                try:
                    result = await Scenario(args, dsn, work, mode, n).run()
                except Exception as error:  # one failed scenario must not lose the others
                    log(f"  failed: {error!r}")
                    result = {"mode": mode, "viewers": n, "failed": repr(error)}
                results.append(result)
                log(
                    "  "
                    + json.dumps(
                        {k: (round(v, 2) if isinstance(v, float) else v) for k, v in result.items()}
                    )
                )
                (out / "results.json").write_text(
                    json.dumps(
                        {
                            "machine": machine(),
                            "args": vars(args),
                            "started": datetime.fromtimestamp(began, UTC).isoformat(),
                            "results": results,
                        },
                        indent=1,
                    )
                )
    log(f"all scenarios done in {(time.time() - began) / 60:.1f} min")
    from bench import report

    report.write(out)
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--scenarios",
        default="100,1000,5000,10000,20000,50000",
        help="viewer counts, comma-separated",
    )
    parser.add_argument(
        "--modes",
        default="ticks,notify,poll",
        help="ticks (push, interval reads only), notify (push with "
        "LISTEN/NOTIFY), pusher (the same viewers over the Pusher endpoint /app/{key}, "
        "signed channels, with LISTEN/NOTIFY), poll (HTTP polling at the interval rules)",
    )
    parser.add_argument("--duration", type=float, default=25.0, help="seconds measured")
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument(
        "--grace",
        type=float,
        default=11.0,
        help="seconds after the window for late changes to arrive",
    )
    parser.add_argument("--clients", type=int, default=3, help="load client processes")
    parser.add_argument("--viewers-per-run", type=int, default=10)
    parser.add_argument("--viewers-per-user", type=int, default=20)
    parser.add_argument("--tenants", type=int, default=50)
    parser.add_argument(
        "--pack-share", type=float, default=0.05, help="share of viewers on review pack cards"
    )
    parser.add_argument(
        "--run-life",
        type=float,
        default=600.0,
        help="runs live 0..2x this many seconds, 10 minutes on average",
    )
    parser.add_argument(
        "--pool-size",
        type=int,
        default=0,
        help="OPSPUSH_POOL_SIZE for push (0: the server's default)",
    )
    parser.add_argument(
        "--poll-pool-size",
        type=int,
        default=16,
        help="OPSPUSH_POOL_SIZE for polling: its 2 statements per request get enough "
        "connections not to be capped by the default 4 (0: the server's default)",
    )
    parser.add_argument(
        "--writer-batches",
        type=int,
        default=4,
        help="the writer commits each second's run updates in this many groups",
    )
    parser.add_argument(
        "--workers",
        default="20000=2",
        help="opspush serve --workers by size, VIEWERS=N,...: from that many viewers on; more "
        "when the descriptor limit needs it (one process holds at most 75%% of it)",
    )
    parser.add_argument("--server-cpus", default="0", help="for one worker (more are not pinned)")
    parser.add_argument(
        "--client-cpus", default="1", help="CPUs for clients, writer and embedded PostgreSQL"
    )
    parser.add_argument("--ready-timeout", type=float, default=60.0)
    parser.add_argument("--work", default=str(ROOT / "bench" / ".work"))
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = parser.parse_args(argv)
    if len(os.sched_getaffinity(0)) < 2:
        args.server_cpus = args.client_cpus = ""
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    raise_fd_limit()
    pin(parse_cpus(args.client_cpus))  # the embedded PostgreSQL inherits this
    return asyncio.run(main_async(args))
