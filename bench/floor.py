"""opspush's fan-out against the floor: a bare `websockets` server sending the same frames.

One load, three servers, measured one after the other in the same run, each pinned to the
same CPU with the clients on the other: N idle viewers spread over `--runs` runs (viewer i
watches run i mod R), then `--frames` bursts, `--interval` seconds apart, each changing
every run.

- **opspush** (`/ws`): `opspush serve` (as `bench.serve` starts it), with notifications;
  the harness commits each burst to the runs in one statement, the engine reads the runs
  once and pushes each run's state frame to its viewers. Its CPU per frame therefore
  includes the reads, the notifications and the access facts.
- **echo** (`/app/{key}`): the same server with the Pusher app set, the same viewers over
  the Pusher endpoint, as Laravel Echo connects: each subscribes to the signed channel
  `private-opspush.run.ID` once its socket id is known.
- **websockets**: `bench.floor_server`, the library's asyncio server and its `broadcast()`
  to each run's viewers of a frame of the same text as opspush's state frame (a new
  counter each time).

Figures per server: **CPU µs per delivered frame** (user + system seconds of the server
process during the series, divided by the frames the clients counted) and **KB per idle
socket** ((RSS with every viewer subscribed − RSS before any connected) / N). The ratios
are each server's / websockets'. Results: `bench/results/floor.json` and `floor.md`.

Usage: python -m bench.floor [--viewers 4000] [--runs 1] [--frames 40] [--interval 0.5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg
import psutil

from bench.common import PUSHER_APP_ID, PUSHER_KEY, PUSHER_SECRET, SECRET, free_port, log
from bench.harness import ROOT, machine, postgres, prepare_database

RUN_COUNTER = '"processed": '


async def seed(dsn: str, runs: int) -> tuple[int, list[int]]:
    """One workspace, tenant and owner, and `runs` running runs: (user id, run ids)."""
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute("TRUNCATE workspaces, users RESTART IDENTITY CASCADE")
        workspace = await connection.fetchval(
            "INSERT INTO workspaces (name) VALUES ('floor') RETURNING id"
        )
        tenant = await connection.fetchval(
            "INSERT INTO tenants (workspace_id, name) VALUES ($1, 'tenant') RETURNING id",
            workspace,
        )
        user = await connection.fetchval(
            "INSERT INTO users (name, email) VALUES ('owner', 'owner@floor') RETURNING id"
        )
        await connection.execute(
            "INSERT INTO workspace_memberships (workspace_id, user_id, role) "
            "VALUES ($1, $2, 'owner')",
            workspace,
            user,
        )
        ids = await connection.fetch(
            """INSERT INTO operation_runs (workspace_id, tenant_id, type, status, outcome,
                   summary_counts, created_at, started_at)
               SELECT $1, $2, 'inventory.sync', 'running', 'pending',
                       '{"total": 100000, "processed": 0, "succeeded": 0, "failed": 0}',
                       now() - interval '2 minutes', now() - interval '2 minutes'
               FROM generate_series(1, $3)
               RETURNING id""",
            workspace,
            tenant,
            runs,
        )
        return int(user), sorted(int(row["id"]) for row in ids)
    finally:
        await connection.close()


class Side:
    """One server under the load: start it, connect the viewers, run the series, measure."""

    def __init__(self, args: argparse.Namespace, name: str, user: int, runs: list[int]) -> None:
        self.args = args
        self.name = name
        self.user = user
        self.runs = runs
        self.port = free_port()
        self.procs: list[asyncio.subprocess.Process] = []

    async def spawn(self, *argv: str, env: dict[str, str] | None = None) -> Any:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            *argv,
            cwd=ROOT,
            env=env or os.environ.copy(),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        self.procs.append(process)
        return process

    async def stop(self) -> None:
        for process in reversed(self.procs):
            if process.returncode is None:
                process.terminate()
        for process in self.procs:
            try:
                async with asyncio.timeout(15):
                    await process.wait()
            except TimeoutError:
                process.kill()
                await process.wait()

    async def start_server(self, dsn: str, frame_file: Path) -> Any:
        args = self.args
        if self.name in ("opspush", "echo"):
            env = os.environ.copy()
            env.update(
                DATABASE_URL=dsn,
                OPSPUSH_SECRET=SECRET,
                OPSPUSH_NOTIFY="1",
                OPSPUSH_MAX_CONNECTIONS_PER_USER="0",
                OPSPUSH_MAX_CONNECTIONS_PER_ADDRESS="0",
                OPSPUSH_ADMISSION_RATE="0",
                OPSPUSH_LOG_LEVEL="warning",
            )
            if self.name == "echo":
                env.update(
                    OPSPUSH_PUSHER_APP_ID=PUSHER_APP_ID,
                    OPSPUSH_PUSHER_KEY=PUSHER_KEY,
                    OPSPUSH_PUSHER_SECRET=PUSHER_SECRET,
                )
            server = await self.spawn(
                "-m", "bench.serve", "--cpus", args.server_cpus, "--port", str(self.port), env=env
            )
            await wait_healthy(self.port, server)
        else:
            server = await self.spawn(
                "-m",
                "bench.floor_server",
                "--port",
                str(self.port),
                "--frame",
                str(frame_file),
                "--cpus",
                args.server_cpus,
            )
            line = await server.stdout.readline()
            if b"ready" not in line:
                raise RuntimeError("the floor server did not start")
        return server

    async def measure(self, dsn: str, frame_file: Path) -> dict[str, Any]:
        args = self.args
        server = await self.start_server(dsn, frame_file)
        try:
            server_ps = psutil.Process(server.pid)
            await asyncio.sleep(1.0)
            rss_base = server_ps.memory_info().rss
            clients = []
            for index in range(args.clients):
                clients.append(
                    await self.spawn(
                        "-m",
                        "bench.floor_client",
                        "--port",
                        str(self.port),
                        "--viewers",
                        str(args.viewers),
                        "--runs",
                        ",".join(map(str, self.runs)),
                        "--user",
                        str(self.user),
                        "--endpoint",
                        self.name,
                        "--index",
                        str(index),
                        "--of",
                        str(args.clients),
                        "--cpus",
                        args.client_cpus,
                    )
                )
            ready = 0
            for client in clients:
                ready += json.loads(await client.stdout.readline())["ready"]
            log(f"  {self.name}: {ready}/{args.viewers} viewers ready")
            await asyncio.sleep(args.settle)
            rss_loaded = server_ps.memory_info().rss
            frames0 = await count(clients)
            cpu0 = cpu_seconds(server_ps)
            started = time.monotonic()
            if self.name != "websockets":
                await self.commit_series(dsn)
            else:
                server.stdin.write(f"go {args.frames} {args.interval}\n".encode())
                await server.stdin.drain()
                await server.stdout.readline()  # done
            # Wait for the last frames to arrive, not for a fixed time.
            expected = frames0 + args.frames * ready
            frames1 = frames0
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                frames1 = await count(clients)
                if frames1 >= expected:
                    break
                await asyncio.sleep(0.2)
            cpu1 = cpu_seconds(server_ps)
            elapsed = time.monotonic() - started
            delivered = frames1 - frames0
            for client in clients:
                client.stdin.write(b"stop\n")
                await client.stdin.drain()
        finally:
            await self.stop()
        return {
            "server": self.name,
            "viewers": args.viewers,
            "ready": ready,
            "frames_sent": args.frames,
            "frames_delivered": delivered,
            "frames_expected": args.frames * ready,
            "elapsed_s": elapsed,
            "cpu_s": cpu1 - cpu0,
            "cpu_us_per_frame": 1e6 * (cpu1 - cpu0) / delivered if delivered else None,
            "kb_per_socket": (rss_loaded - rss_base) / 1024 / max(1, ready),
            "rss_base_mb": rss_base / 2**20,
            "rss_loaded_mb": rss_loaded / 2**20,
        }

    async def commit_series(self, dsn: str) -> None:
        """The host's changes: one commit per burst (every run), `--interval` apart."""
        args = self.args
        connection = await asyncpg.connect(dsn)
        try:
            loop = asyncio.get_running_loop()
            start = loop.time()
            for seq in range(1, args.frames + 1):
                await connection.execute(
                    "UPDATE operation_runs SET summary_counts = jsonb_set(summary_counts, "
                    "'{processed}', to_jsonb($2::int)), updated_at = now() WHERE id = ANY($1)",
                    self.runs,
                    seq,
                )
                await asyncio.sleep(max(0.0, start + seq * args.interval - loop.time()))
        finally:
            await connection.close()


async def count(clients: list[Any]) -> int:
    total = 0
    for client in clients:
        client.stdin.write(b"count\n")
        await client.stdin.drain()
        total += json.loads(await client.stdout.readline())["frames"]
    return total


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


async def wait_healthy(port: int, server: Any) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.returncode is not None:
            raise RuntimeError(f"the server exited with {server.returncode}")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.2)
    raise RuntimeError("the server did not become healthy")


async def state_frame_template(dsn: str, run: int) -> str:
    """opspush's own state frame for a run, with its id as `{run}`, its counter as `{seq}`."""
    from opspush.core import protocol, views
    from opspush.database.storage import Storage, create_pool

    pool = await create_pool(dsn, 1)
    try:
        rows = await Storage(pool).read_runs([run])
    finally:
        await pool.close()
    row = rows[run]
    data = protocol.encode(views.run_data(row))
    frame = protocol.state_frame(f"run:{run}", data, 10)
    frame = frame.replace(f'"run:{run}"', '"run:{run}"').replace(f'"id":{run},', '"id":{run},')
    return frame.replace('"processed":0', '"processed":{seq}')


def write_report(out: Path, result: dict[str, Any]) -> None:
    sides = {side["server"]: side for side in result["sides"]}
    floor = sides["websockets"]
    ratios = {
        name: {
            "cpu_per_frame": side["cpu_us_per_frame"] / floor["cpu_us_per_frame"],
            "kb_per_socket": side["kb_per_socket"] / floor["kb_per_socket"],
        }
        for name, side in sides.items()
        if name != "websockets"
    }
    result["ratios"] = ratios
    (out / "floor.json").write_text(json.dumps(result, indent=1))
    first = result["sides"][0]
    lines = [
        f"# opspush against a bare `websockets` broadcast: {first['viewers']:,} idle viewers "
        f"of {result['runs']} run(s), {first['frames_sent']} bursts",
        "",
        f"Measured {result['started']} on {result['machine']['cores']} cores "
        f"({result['machine']['cpu']}); `python -m bench.floor " + " ".join(result["argv"]) + "`.",
        "",
        "| server | frames delivered | CPU µs per frame | KB per socket | CPU / floor "
        "| memory / floor |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    labels = {"opspush": "opspush `/ws`", "echo": "opspush `/app/{key}` (Echo)"}
    for side in result["sides"]:
        name = side["server"]
        ratio = ratios.get(name)
        lines.append(
            f"| {labels.get(name, 'websockets `broadcast()` (the floor)')} "
            f"| {side['frames_delivered']:,} / {side['frames_expected']:,} "
            f"| {side['cpu_us_per_frame']:.2f} | {side['kb_per_socket']:.1f} "
            + (
                f"| **{ratio['cpu_per_frame']:.2f}x** | **{ratio['kb_per_socket']:.2f}x** |"
                if ratio
                else "| 1x | 1x |"
            )
        )
    lines.append("")
    (out / "floor.md").write_text("\n".join(lines))
    print("\n".join(lines))


async def main_async(args: argparse.Namespace, argv: list[str]) -> int:
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240  # a harness, not the server
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240  # a harness, not the server
    began = time.time()
    with postgres(work) as (admin_dsn, _embedded):
        dsn = await prepare_database(admin_dsn)
        user, runs = await seed(dsn, args.runs)
        frame_file = work / "floor-frame.txt"
        frame_file.write_text(await state_frame_template(dsn, runs[0]))
        sides = []
        for name in args.order.split(","):
            log(f"{name}: {args.viewers} viewers, {args.frames} frames")
            sides.append(await Side(args, name, user, runs).measure(dsn, frame_file))
            log(
                "  "
                + json.dumps(
                    {k: round(v, 2) if isinstance(v, float) else v for k, v in sides[-1].items()}
                )
            )
    result = {
        "machine": machine(),
        "argv": argv,
        "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(began)),
        "runs": args.runs,
        "sides": sides,
    }
    write_report(out, result)
    return 0


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.floor", description=__doc__)
    parser.add_argument("--viewers", type=int, default=4000)
    parser.add_argument("--runs", type=int, default=1, help="viewer i watches run i mod RUNS")
    parser.add_argument("--frames", type=int, default=40, help="changes pushed to everyone")
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between changes")
    parser.add_argument("--clients", type=int, default=2, help="load client processes")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds before measuring")
    parser.add_argument("--order", default="opspush,echo,websockets")
    parser.add_argument("--server-cpus", default="0")
    parser.add_argument("--client-cpus", default="1")
    parser.add_argument("--work", default=str(ROOT / "bench" / ".work"))
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    return asyncio.run(main_async(parse_args(argv), argv))


if __name__ == "__main__":
    sys.exit(main())
