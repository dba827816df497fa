"""What another viewer sees while one hostile client attacks the server (issue 17).

    .venv/bin/python -m bench.attacks --python OTHER_VENV/bin/python --label before
    .venv/bin/python -m bench.attacks --python /work/main/.venv/bin/python --label after
    .venv/bin/python -m bench.attacks --compare before after

The server is the `opspush` installed in `--python`'s environment (so two checkouts can be
measured with the same bench). A throwaway database is created, migrated (`opspush migrate`)
and seeded: one workspace, one running run, three owners (the witness, the attacker, the
probes). Then, for each attack, a fresh `opspush serve` (one process, uvloop as it picks by
default, the Pusher app configured, its log captured), and:

- a **witness** (`websockets`) says hello and subscribes to the run, which a writer updates
  every 0.25 s; every state frame's arrival is kept. Its longest wait between two states
  during the attack (and until the first state after it, at most `--tail` seconds) is the
  figure the issue asks for; normally 0.25 s.
- a **probe**: every second, a fresh connection says hello and must get its welcome within
  2 s (can a new viewer still connect?).
- the **attacker**: `bench.attack_client`, a separate process (its CPU is not the bench's),
  for `--seconds`; killed if it has not finished 3 s after that.
- the server process: alive, RSS (sampled every 0.2 s), CPU seconds used in the window, and
  the ERROR lines and bytes it logged in the window.

An `idle` row (no attacker) comes first, as the reference. Results: a table printed and
written to `bench/results/attacks-<label>.md`, the raw figures to `attacks-<label>.json`,
the server logs to `bench/results/raw/attacks-<label>/`. Timings, not assertions.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import resource
import signal
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import psutil
import websockets
from websockets.asyncio.client import connect as ws_connect

from bench.attack_client import ATTACKS
from bench.common import (
    PUSHER_APP_ID,
    PUSHER_KEY,
    PUSHER_SECRET,
    SECRET,
    free_port,
    log,
    raise_fd_limit,
)

ROOT = Path(__file__).resolve().parent.parent
ROWS = ("idle", *ATTACKS)
WRITE_EVERY = 0.25  # the writer's period: the witness's normal wait
PROBE_TIMEOUT = 2.0
ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"


def with_database(dsn: str, name: str) -> str:
    base, _, _ = dsn.rpartition("/")
    return f"{base}/{name}"


# -- the target: the opspush of another environment ---------------------------------------


async def run_cmd(argv: list[str], env: dict[str, str], timeout: float = 60) -> str:
    process = await asyncio.create_subprocess_exec(
        *argv,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        stdin=asyncio.subprocess.DEVNULL,
    )
    try:
        out, _ = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise RuntimeError(f"{argv[1:4]} did not finish in {timeout} s") from None
    if process.returncode != 0:
        raise RuntimeError(f"{argv} failed ({process.returncode}): {out.decode()[-500:]}")
    return out.decode()


async def target_info(python: str) -> dict[str, Any]:
    """The version, source directory and commit of the opspush that `python` imports."""
    out = await run_cmd(
        [
            python,
            "-c",
            "import os, opspush, uvicorn, websockets; print(opspush.__version__); "
            "print(os.path.dirname(opspush.__file__)); print(uvicorn.__version__); "
            "print(websockets.__version__)",
        ],
        dict(os.environ),
    )
    version, source, uvicorn_version, ws_version = out.split()[:4]
    commit = dirty = ""
    with contextlib.suppress(Exception):
        env = dict(os.environ)
        commit = (await run_cmd(["git", "-C", source, "rev-parse", "--short", "HEAD"], env)).strip()
        status = await run_cmd(["git", "-C", source, "status", "--porcelain", "--", "."], env)
        dirty = " (with uncommitted changes)" if status.strip() else ""
    return {
        "python": python,
        "version": version,
        "source": source,
        "commit": commit + dirty,
        "uvicorn": uvicorn_version,
        "websockets": ws_version,
    }


def server_env(dsn: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPSPUSH_")}
    env.update(
        DATABASE_URL=dsn,
        OPSPUSH_SECRET=SECRET,
        OPSPUSH_PUSHER_APP_ID=PUSHER_APP_ID,
        OPSPUSH_PUSHER_KEY=PUSHER_KEY,
        OPSPUSH_PUSHER_SECRET=PUSHER_SECRET,
        OPSPUSH_LOG_LEVEL="info",  # the default: the log's volume is measured
        OPSPUSH_DRAIN_SECONDS="1",  # a quick stop between attacks
    )
    return env


async def seed(dsn: str) -> dict[str, int]:
    """One workspace and tenant, three owners, one run running for two minutes."""
    db = await asyncpg.connect(dsn)
    try:
        workspace = await db.fetchval(
            "INSERT INTO workspaces (name) VALUES ('attacks') RETURNING id"
        )
        tenant = await db.fetchval(
            "INSERT INTO tenants (workspace_id, name) VALUES ($1, 'tenant') RETURNING id",
            workspace,
        )
        ids = {}
        for who in ("witness", "attacker", "probe"):
            ids[who] = await db.fetchval(
                "INSERT INTO users (name, email) VALUES ($1, $1 || '@attacks') RETURNING id", who
            )
            await db.execute(
                "INSERT INTO workspace_memberships (workspace_id, user_id, role) "
                "VALUES ($1, $2, 'owner')",
                workspace,
                ids[who],
            )
        ids["run"] = await db.fetchval(
            """INSERT INTO operation_runs (workspace_id, tenant_id, type, status, outcome,
                   summary_counts, created_at, started_at)
               VALUES ($1, $2, 'inventory.sync', 'running', 'pending',
                       '{"total": 1000000, "processed": 0, "succeeded": 0, "failed": 0}',
                       now() - interval '2 minutes', now() - interval '2 minutes')
               RETURNING id""",
            workspace,
            tenant,
        )
        return ids
    finally:
        await db.close()


async def writer(dsn: str, run: int, stop: asyncio.Event) -> None:
    """The host application: the run's progress, every 0.25 s, until stopped."""
    db = await asyncpg.connect(dsn)
    try:
        processed = 0
        while not stop.is_set():
            processed += 1
            await db.execute(
                """UPDATE operation_runs
                   SET summary_counts = jsonb_set(summary_counts, '{processed}', to_jsonb($2::int)),
                       updated_at = now()
                   WHERE id = $1""",
                run,
                processed,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), WRITE_EVERY)
    finally:
        await db.close()


# -- one server ----------------------------------------------------------------------------


def limits(fd_limit: int | None, cpus: str) -> Any:
    """For the server's process, before exec: its CPUs, and a lower descriptor limit."""

    def apply() -> None:
        if fd_limit:
            resource.setrlimit(resource.RLIMIT_NOFILE, (fd_limit, fd_limit))
        if cpus and cpus != "any":
            with contextlib.suppress(OSError):
                os.sched_setaffinity(0, {int(c) for c in cpus.split(",")})

    return apply


async def http_status(port: int, path: str, timeout: float = 1.0) -> int | None:
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
                line = await reader.readline()
                return int(line.split()[1])
            finally:
                writer.close()
    except (OSError, TimeoutError, ValueError, IndexError):
        return None


class Server:
    def __init__(self, python: str, dsn: str, log_path: Path, args: argparse.Namespace) -> None:
        self.python, self.dsn, self.log_path, self.args = python, dsn, log_path, args
        self.port = free_port()
        self.process: asyncio.subprocess.Process | None = None
        self.ps: psutil.Process | None = None

    async def start(self, fd_limit: int | None = None) -> None:
        self.log_file = self.log_path.open("wb")  # the bench, not the server
        self.process = await asyncio.create_subprocess_exec(
            self.python,
            "-m",
            "opspush",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            env=server_env(self.dsn),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=self.log_file,
            stderr=self.log_file,
            preexec_fn=limits(fd_limit, self.args.server_cpus),
        )
        self.ps = psutil.Process(self.process.pid)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.returncode is not None:
                raise RuntimeError(f"the server exited with {self.process.returncode}")
            if await http_status(self.port, "/healthz") == 200:
                return
            await asyncio.sleep(0.2)
        raise RuntimeError("the server did not become healthy in 30 s")

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None

    def rss(self) -> int | None:
        with contextlib.suppress(psutil.Error, AttributeError):
            return int(self.ps.memory_info().rss)  # type: ignore[union-attr]
        return None

    def cpu(self) -> float | None:
        with contextlib.suppress(psutil.Error, AttributeError):
            times = self.ps.cpu_times()  # type: ignore[union-attr]
            return float(times.user + times.system)
        return None

    def log_size(self) -> int:
        self.log_file.flush()
        return self.log_path.stat().st_size

    async def stop(self) -> int | None:
        process = self.process
        if process is not None and process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), 4)
            except TimeoutError:
                process.kill()
                await process.wait()
        self.log_file.close()
        return process.returncode if process else None


# -- the witness and the probes ------------------------------------------------------------


class Witness:
    """One viewer of the run: hello, subscribe, the arrival time of every state frame."""

    def __init__(self, port: int, token: str, run: int) -> None:
        self.url = f"ws://127.0.0.1:{port}/ws"
        self.token, self.run = token, run
        self.arrivals: list[float] = []
        self.drops: list[tuple[float, str]] = []
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self.watch())

    async def watch(self) -> None:
        while True:
            try:
                async with ws_connect(
                    self.url, open_timeout=PROBE_TIMEOUT, ping_interval=None, close_timeout=1
                ) as ws:
                    await ws.send(json.dumps({"op": "hello", "token": self.token}))
                    await ws.send(json.dumps({"op": "subscribe", "ch": f"run:{self.run}"}))
                    async for message in ws:
                        if isinstance(message, str) and message.startswith('{"type":"state"'):
                            self.arrivals.append(time.monotonic())
                    self.drops.append((time.monotonic(), f"closed {ws.close_code}"))
            except asyncio.CancelledError:
                raise
            except Exception as error:
                self.drops.append((time.monotonic(), type(error).__name__))
            await asyncio.sleep(0.5)

    async def ready(self, count: int = 4, timeout: float = 15) -> bool:
        deadline = time.monotonic() + timeout
        while len(self.arrivals) < count and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        return len(self.arrivals) >= count

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)


async def probe(port: int, token: str) -> str | None:
    """A new viewer: None if its welcome came within the timeout, else why not."""
    try:
        async with (
            asyncio.timeout(PROBE_TIMEOUT),
            ws_connect(
                f"ws://127.0.0.1:{port}/ws",
                open_timeout=None,
                ping_interval=None,
                close_timeout=0.2,
            ) as ws,
        ):
            await ws.send(json.dumps({"op": "hello", "token": token}))
            answer = json.loads(await ws.recv())
            return None if answer.get("type") == "welcome" else f"answer {answer.get('type')}"
    except TimeoutError:
        return "timeout"
    except websockets.InvalidStatus as error:
        return f"HTTP {error.response.status_code}"
    except Exception as error:
        return type(error).__name__


# -- one attack ----------------------------------------------------------------------------


def gaps_in(arrivals: list[float], t0: float, t_end: float) -> list[float]:
    """The witness's waits between states in [t0, t_end]: from the last state before t0 (or
    t0) to each state in the window, and the one still open at t_end."""
    before = [a for a in arrivals if a <= t0]
    previous = before[-1] if before else t0
    gaps = []
    for arrival in arrivals:
        if t0 < arrival <= t_end:
            gaps.append(arrival - previous)
            previous = arrival
    gaps.append(t_end - previous)  # the wait still open at the end (or ~0 if one just came)
    return gaps


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] if ordered else 0.0


def log_window(path: Path, start: int, end: int) -> dict[str, Any]:
    with path.open("rb") as file:
        file.seek(start)
        data = file.read(max(0, end - start))
    lines = data.decode("utf-8", "replace").splitlines()
    errors = [line for line in lines if " ERROR " in line]
    warnings = [line for line in lines if " WARNING " in line]
    return {
        "log_bytes": len(data),
        "log_lines": len(lines),
        "error_lines": len(errors),
        "warning_lines": len(warnings),
        "first_error": errors[0][:240] if errors else None,
        "first_warning": warnings[0][:240] if warnings else None,
    }


async def attacker_result(process: asyncio.subprocess.Process, until: float) -> dict[str, Any]:
    assert process.stdout is not None
    try:
        line = await asyncio.wait_for(process.stdout.readline(), max(0.1, until - time.monotonic()))
        result: dict[str, Any] = json.loads(line) if line.strip() else {"error": "no result"}
    except TimeoutError:
        result = {"error": "killed at its time limit (it did not stop by itself)"}
    except ValueError:
        result = {"error": "unreadable result"}
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
    await process.wait()
    return result


async def one_attack(
    name: str, args: argparse.Namespace, dsn: str, ids: dict[str, int], tokens: dict[str, str]
) -> dict[str, Any]:
    server = Server(args.python, dsn, args.raw / f"{name}.log", args)
    fd_limit = args.body_fd_limit if name == "body-hold" else None
    await server.start(fd_limit)
    witness = Witness(server.port, tokens["witness"], ids["run"])
    witness.start()
    attacker: asyncio.subprocess.Process | None = None
    probes: list[asyncio.Task[str | None]] = []
    try:
        if not await witness.ready():
            raise RuntimeError("the witness got no states before the attack")
        await asyncio.sleep(1.0)
        rss0, cpu0, log0 = server.rss(), server.cpu(), server.log_size()
        peak = rss0 or 0
        result: dict[str, Any] = {}
        if name != "idle":
            attacker = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bench.attack_client",
                "--attack",
                name,
                "--port",
                str(server.port),
                "--seconds",
                str(args.seconds),
                "--token",
                tokens["attacker"],
                "--key",
                PUSHER_KEY,
                "--app-id",
                PUSHER_APP_ID,
                "--connections",
                str(args.connections),
                "--requests",
                str(args.requests),
                "--cpus",
                args.attacker_cpus,
                cwd=ROOT,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
            )
            assert attacker.stdout is not None
            try:
                line = await asyncio.wait_for(attacker.stdout.readline(), 15)
            except TimeoutError:
                line = b""
            if line.strip() != b"ready":
                result = {"error": f"the attacker did not start: {line[:300]!r}"}
        t0 = time.monotonic()
        attack_end = t0 + args.seconds
        result_task = (
            asyncio.create_task(attacker_result(attacker, attack_end + 3.0))
            if attacker is not None and not result
            else None
        )
        died_at: float | None = None
        next_probe = t0
        # The attack, then the tail: until the witness's first state after the attack ended
        # (the attacker's process exited), at most --tail seconds.
        hard_end = attack_end + 3.0 + args.tail
        t_end = hard_end
        finished_at: float | None = None if result_task else attack_end
        while time.monotonic() < hard_end:
            now = time.monotonic()
            if now >= next_probe and now < attack_end + args.tail:
                probes.append(asyncio.create_task(probe(server.port, tokens["probe"])))
                next_probe += 1.0
            rss = server.rss()
            if rss:
                peak = max(peak, rss)
            if died_at is None and not server.alive:
                died_at = now - t0
            if finished_at is None and result_task is not None and result_task.done():
                finished_at = now  # the attacker's process has stopped (its sockets closed)
            if finished_at is not None:
                if any(a > finished_at for a in witness.arrivals):
                    t_end = min(a for a in witness.arrivals if a > finished_at)
                    break
                if now >= finished_at + args.tail:
                    t_end = now
                    break
            await asyncio.sleep(0.05)
        if result_task is not None:
            result = await result_task
        rss1, cpu1, log1 = server.rss(), server.cpu(), server.log_size()
        if probes:
            await asyncio.wait(probes, timeout=PROBE_TIMEOUT + 0.5)
        probe_failures: dict[str, int] = {}
        for task in probes:
            outcome = task.result() if task.done() and not task.cancelled() else "unfinished"
            if outcome is not None:
                probe_failures[outcome] = probe_failures.get(outcome, 0) + 1
        gaps = gaps_in(witness.arrivals, t0, t_end)
        finished = finished_at if finished_at is not None else attack_end
        after = [a for a in witness.arrivals if a > finished]
        row = {
            "attack": name,
            "seconds": args.seconds,
            "max_gap": max(gaps),
            "p99_gap": p99(gaps),
            # The attack's span: until its time is up, or until the attacker is done if sooner.
            "updates": sum(1 for a in witness.arrivals if t0 < a <= min(attack_end, finished)),
            "expected_updates": round((min(attack_end, finished) - t0) / WRITE_EVERY),
            "back_after": (after[0] - finished) if after and after[0] <= t_end else None,
            "witness_drops": [
                (round(t - t0, 2), why) for t, why in witness.drops if t0 - 1 <= t <= t_end
            ],
            "probes": len(probes),
            "probe_failures": probe_failures,
            "rss_before_mb": (rss0 or 0) / 2**20,
            "rss_peak_mb": peak / 2**20,
            "rss_after_mb": (rss1 or 0) / 2**20,
            "cpu_seconds": (cpu1 - cpu0) if cpu0 is not None and cpu1 is not None else None,
            "window_seconds": t_end - t0,
            "server_died_at": died_at,
            "fd_limit": fd_limit,
            "attacker": result,
            **log_window(server.log_path, log0, log1),
        }
        return row
    finally:
        for task in probes:
            task.cancel()
        await asyncio.gather(*probes, return_exceptions=True)
        if attacker is not None and attacker.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                attacker.kill()
            await attacker.wait()
        await witness.stop()
        code = await server.stop()
        if code not in (0, None, -signal.SIGKILL):
            log(f"  the server exited with {code}")


# -- the table -----------------------------------------------------------------------------


def closed_cell(row: dict[str, Any]) -> str:
    attacker = row.get("attacker") or {}
    if row["attack"] == "idle":
        return "–"
    if "error" in attacker:
        return f"bench error: {attacker['error']}"
    if row["attack"] == "dup-origin":
        statuses = ", ".join(f"{k}×{v}" for k, v in sorted(attacker.get("statuses", {}).items()))
        taken = attacker.get("seconds_taken")
        return f"{attacker.get('requests', 0)} requests in {taken} s: {statuses or 'no answer'}"
    if attacker.get("closed_at") is None:
        return "no"
    cell = f"at {attacker['closed_at']:.2f} s: {attacker['close']}"
    connections = attacker.get("connections", 1)
    if connections > 1:  # it reconnected each time it was closed, until its time was up
        cell += f" ({connections} connections, {sum(attacker['closes'].values())} closed)"
    return cell


def gap(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f} s"


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| attack | witness's longest wait | p99 wait | witness updates | back after | "
        "new viewers failed | attacker closed by the server | server RSS MB before → peak → "
        "after | server CPU s | log ERROR lines / KB | server |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for row in rows:
        if "failed" in row:
            lines.append(f"| {row['attack']} | bench failed: {row['failed']} |" + " |" * 9)
            continue
        failures = sum(row["probe_failures"].values())
        back = row["back_after"]
        lines.append(
            "| "
            + " | ".join(
                [
                    row["attack"],
                    gap(row["max_gap"]),
                    gap(row["p99_gap"]),
                    f"{row['updates']} of {row['expected_updates']}",
                    gap(back)
                    if back is not None
                    else f"> {row['window_seconds'] - row['seconds']:.1f} s",
                    f"{failures} of {row['probes']}",
                    closed_cell(row),
                    " → ".join(
                        f"{row[k]:.0f}" for k in ("rss_before_mb", "rss_peak_mb", "rss_after_mb")
                    ),
                    "–" if row["cpu_seconds"] is None else f"{row['cpu_seconds']:.1f}",
                    f"{row['error_lines']} / {row['log_bytes'] / 1024:.0f}",
                    "alive"
                    if row["server_died_at"] is None
                    else f"died at {row['server_died_at']:.1f} s",
                ]
            )
            + " |"
        )
    return head + "\n".join(lines) + "\n"


def details(rows: list[dict[str, Any]]) -> str:
    out = []
    for row in rows:
        if "failed" in row or row["attack"] == "idle":
            continue
        attacker = {k: v for k, v in row["attacker"].items() if k not in ("closed_at", "close")}
        bits = [f"- **{row['attack']}**: attacker {json.dumps(attacker)}"]
        if row["probe_failures"]:
            bits.append(f"new viewers: {json.dumps(row['probe_failures'])}")
        if row["witness_drops"]:
            bits.append(f"witness disconnected: {row['witness_drops']}")
        if row["fd_limit"]:
            bits.append(f"server's RLIMIT_NOFILE {row['fd_limit']}")
        if row["first_error"]:
            bits.append(f"first ERROR: `{row['first_error']}`")
        elif row["first_warning"]:
            bits.append(f"first WARNING: `{row['first_warning']}`")
        out.append("; ".join(bits))
    return "\n".join(out) + "\n"


def markdown(data: dict[str, Any]) -> str:
    target = data["target"]
    return (
        f"# Attacks: {data['label']}\n\n"
        f"opspush {target['version']} from `{target['source']}` "
        f"(commit {target['commit'] or '?'}), "
        f"uvicorn {target['uvicorn']}, websockets {target['websockets']}; {data['machine']}; "
        f"{data['started']}.\n"
        f"Each attack {data['seconds']:g} s against a fresh `opspush serve` (one process); the "
        f"witness's run changes every {WRITE_EVERY} s; a new viewer tries to connect every "
        "second (welcome within 2 s). Waits are measured until the witness's first state after "
        f"the attack ended (at most {data['tail']:g} s more).\n"
        f"Command: `{data['command']}`\n\n" + table(data["rows"]) + "\n" + details(data["rows"])
    )


def compare(out: Path, labels: list[str]) -> str:
    loaded = [json.loads((out / f"attacks-{label}.json").read_text()) for label in labels]
    names = [row["attack"] for row in loaded[0]["rows"]]
    for data in loaded[1:]:
        names += [r["attack"] for r in data["rows"] if r["attack"] not in names]
    by = [{row["attack"]: row for row in data["rows"]} for data in loaded]

    def cell(row: dict[str, Any] | None, what: str) -> str:
        if row is None or "failed" in row:
            return "–"
        if what == "gap":
            return gap(row["max_gap"])
        if what == "updates":
            return f"{row['updates']}/{row['expected_updates']}"
        if what == "probes":
            return f"{sum(row['probe_failures'].values())}/{row['probes']}"
        if what == "closed":
            return closed_cell(row)
        if what == "rss":
            return f"+{row['rss_peak_mb'] - row['rss_before_mb']:.0f}"
        if what == "errors":
            return f"{row['error_lines']} / {row['log_bytes'] / 1024:.0f} KB"
        return "?"

    columns = [
        ("gap", "longest wait"),
        ("updates", "updates"),
        ("probes", "new viewers failed"),
        ("closed", "attacker closed"),
        ("rss", "RSS peak growth MB"),
        ("errors", "log ERROR lines / bytes"),
    ]
    head = "| attack | " + " | ".join(
        f"{title}: {label}" for _, title in columns for label in labels
    )
    lines = [head + " |", "|---" * (1 + len(columns) * len(labels)) + "|"]
    for name in names:
        cells = [cell(b.get(name), what) for what, _ in columns for b in by]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    sources = "; ".join(
        f"{label}: opspush {d['target']['version']} commit {d['target']['commit']}, {d['started']}"
        for label, d in zip(labels, loaded, strict=True)
    )
    return f"# Attacks: {' vs '.join(labels)}\n\n{sources}\n\n" + "\n".join(lines) + "\n"


# -- everything ----------------------------------------------------------------------------


async def main_async(args: argparse.Namespace) -> int:
    began = time.monotonic()
    target = await target_info(args.python)
    log(f"target: opspush {target['version']} from {target['source']} ({target['commit']})")
    names = [n for n in (args.only.split(",") if args.only else ROWS) if n]
    unknown = [n for n in names if n not in ROWS]
    if unknown:
        raise SystemExit(f"unknown attack(s) {unknown}; known: {', '.join(ROWS)}")
    args.raw.mkdir(parents=True, exist_ok=True)  # a bench, not the server
    name = f"opspush_attacks_{os.getpid()}"
    admin = await asyncpg.connect(args.database_url)
    await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    await admin.execute(f"CREATE DATABASE {name}")
    dsn = with_database(args.database_url, name)
    rows: list[dict[str, Any]] = []
    stop = asyncio.Event()
    writing: asyncio.Task[None] | None = None
    try:
        env = server_env(dsn)
        await run_cmd([args.python, "-m", "opspush", "migrate"], env)
        ids = await seed(dsn)
        tokens = {
            who: (
                await run_cmd([args.python, "-m", "opspush", "token", "--user", str(ids[who])], env)
            ).strip()
            for who in ("witness", "attacker", "probe")
        }
        writing = asyncio.create_task(writer(dsn, ids["run"], stop))
        for attack in names:
            log(f"{attack}: {args.seconds:g} s")
            try:
                row = await one_attack(attack, args, dsn, ids, tokens)
            except Exception as error:  # one failed attack must not lose the others
                log(f"  failed: {error!r}")
                row = {"attack": attack, "failed": repr(error)[:300]}
            rows.append(row)
            if "failed" not in row:
                log(
                    f"  longest wait {row['max_gap']:.2f} s, {row['updates']} updates, "
                    f"attacker closed: {closed_cell(row)}"
                )
    finally:
        stop.set()
        if writing is not None:
            await asyncio.gather(writing, return_exceptions=True)
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.close()
    data = {
        "label": args.label,
        "target": target,
        "machine": f"{os.cpu_count()} cores, {platform.release()}",
        "started": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "seconds": args.seconds,
        "tail": args.tail,
        "command": "python -m bench.attacks " + " ".join(sys.argv[1:]),
        "rows": rows,
    }
    text = markdown(data)
    print()
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"attacks-{args.label}.md").write_text(text)
    (args.out / f"attacks-{args.label}.json").write_text(json.dumps(data, indent=1))
    log(f"written: bench/results/attacks-{args.label}.md in {time.monotonic() - began:.0f} s")
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.attacks",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--python", help="the Python of the venv whose opspush is measured")
    parser.add_argument("--label", default="run", help="names the results: attacks-LABEL.md")
    parser.add_argument("--seconds", type=float, default=8.0, help="per attack")
    parser.add_argument("--only", default="", help=f"comma-separated, of: {', '.join(ROWS)}")
    parser.add_argument(
        "--tail",
        type=float,
        default=10.0,
        help="after an attack, wait at most this long for the witness's next state",
    )
    parser.add_argument("--connections", type=int, default=2000, help="body-hold's connections")
    parser.add_argument(
        "--body-fd-limit",
        type=int,
        default=1024,
        help="the server's RLIMIT_NOFILE during body-hold (0: as inherited): the issue held "
        "20,000 connections against a 20,000 limit; here 2,000 against 1,024",
    )
    parser.add_argument("--requests", type=int, default=2000, help="dup-origin's upgrades")
    parser.add_argument("--server-cpus", default="any", help="pin the server, e.g. 0")
    parser.add_argument("--attacker-cpus", default="any", help="pin the attacker, e.g. 1")
    parser.add_argument(
        "--database-url",
        default=os.environ.get("DATABASE_URL") or ADMIN_DSN,
        help="a PostgreSQL where a throwaway database may be created",
    )
    parser.add_argument(
        "--compare", nargs="+", metavar="LABEL", help="print saved results side by side"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    if not args.compare and not args.python:
        parser.error("--python is required (or --compare LABEL LABEL)")
    args.raw = args.out / "raw" / f"attacks-{args.label}"
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.compare:
        text = compare(args.out, args.compare)
        print(text)
        (args.out / f"attacks-{'-vs-'.join(args.compare)}.md").write_text(text)
        return 0
    raise_fd_limit()
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
