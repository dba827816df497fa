"""Commit-to-viewer latency in attach mode, with and without the notification triggers.

    .venv/bin/python -m bench.attach_latency [--samples 8]

A Laravel-shaped console database (examples/laravel/) is created twice beside DATABASE_URL's
(or in an embedded PostgreSQL), attached once with `--triggers` and once without; a server
serves each as its least-privilege role. The console updates a running run's counters (a run
older than a minute: the 10 s interval) and the time from its COMMIT to the viewer's frame
is measured. Prints the figures; asserts nothing (timings belong here, not in tests).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import secrets
import statistics
import time
import uuid
from collections.abc import AsyncIterator

import asyncpg
import uvicorn
import websockets

from opspush.app import create_app
from opspush.attach import attach, host_demo
from opspush.commands.runner import uvicorn_config
from opspush.config import Settings
from opspush.core.auth import mint_token
from opspush.database.mapping import load, quote

SECRET = secrets.token_urlsafe(32)


@contextlib.asynccontextmanager
async def served(dsn: str, schema: str) -> AsyncIterator[int]:
    settings = Settings(secret=SECRET, attach_schema=schema, log_level="warning", port=0)
    app = create_app(settings, dsn)
    server = uvicorn.Server(uvicorn_config(app, settings))
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()  # it failed to start: say why
            await asyncio.sleep(0.01)
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        await task
        sock.close()


async def measure(admin_dsn: str, *, triggers: bool, samples: int) -> list[float]:
    suffix = uuid.uuid4().hex[:8]
    name, role = f"opspush_latency_{suffix}", f"opspush_latency_{suffix}"
    dsn = await host_demo.create_host(admin_dsn, name)
    mapping = load(host_demo.MAPPING)
    db = await asyncpg.connect(dsn)
    try:
        await attach.attach(db, mapping, triggers=triggers, say=lambda _line: None)
        await host_demo.create_serving_role(db, role, "latency", mapping.schema)
        console = host_demo.Console(db)
        ws = await console.workspace()
        owner = await console.user(ws, "owner")
        run = await console.run(ws, status="running")
        await db.execute(
            """UPDATE operation_runs SET created_at = (now() AT TIME ZONE 'UTC') - interval '2 min'
               WHERE id = $1""",
            run,
        )
        latencies = []
        serving = host_demo.as_role(dsn, role, "latency")
        async with (
            served(serving, mapping.schema) as port,
            websockets.connect(f"ws://127.0.0.1:{port}/ws") as socket,
        ):
            await socket.send(json.dumps({"op": "hello", "token": mint_token(owner, SECRET)}))
            await socket.recv()
            await socket.send(json.dumps({"op": "subscribe", "ch": f"run:{run}"}))
            first = json.loads(await socket.recv())
            assert first["interval"] == 10, first
            for processed in range(1, samples + 1):
                # A random phase against the 10 s tick (without triggers, the tick finds it).
                await asyncio.sleep(random.uniform(0.2, 1.5 if triggers else 10.0))
                await console.progress(run, {"total": 1000, "processed": processed})
                committed = time.perf_counter()
                while True:
                    frame = json.loads(await socket.recv())
                    if frame["data"]["summary_counts"].get("processed") == processed:
                        break
                latencies.append(time.perf_counter() - committed)
        return latencies
    finally:
        await db.close()
        admin = await asyncpg.connect(admin_dsn)
        await admin.execute(f"DROP DATABASE IF EXISTS {quote(name)} WITH (FORCE)")
        await admin.execute(f"DROP ROLE IF EXISTS {quote(role)}")
        await admin.close()


def summary(label: str, values: list[float]) -> str:
    ms = sorted(v * 1000 for v in values)
    return (
        f"{label}: n={len(ms)} median={statistics.median(ms):.0f} ms "
        f"min={ms[0]:.0f} ms max={ms[-1]:.0f} ms"
    )


async def main(samples: int) -> None:
    url = os.environ.get("DATABASE_URL")
    server = None
    if not url:
        import tempfile

        from opspush.database import embedded

        server = embedded.start(tempfile.mkdtemp(prefix="opspush-latency-"), delete_on_stop=True)
        url = server.dsn
    try:
        with_triggers = await measure(url, triggers=True, samples=samples)
        print(summary("attach mode, with triggers (NOTIFY)", with_triggers), flush=True)
        without = await measure(url, triggers=False, samples=samples)
        print(summary("attach mode, without triggers (10 s tick)", without), flush=True)
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=8)
    asyncio.run(main(parser.parse_args().samples))
