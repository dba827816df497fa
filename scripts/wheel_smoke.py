"""The installed wheel's smoke test (run by scripts/wheel-smoke in the wheel's own venv)."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg

import opspush
from opspush.client import connect
from opspush.commands.demo import Simulator, seed
from opspush.core.auth import mint_token
from opspush.database.migrations import with_database
from opspush.database.storage import create_pool

SECRET = "wheel-smoke-secret-wheel-smoke-secret"
DATABASE = "opspush_wheel_smoke"


def step(text: str) -> None:
    print(f"-- {text}", flush=True)


@asynccontextmanager
async def database() -> AsyncIterator[str]:
    """A fresh, empty database: on DATABASE_URL's server, or an embedded PostgreSQL."""
    admin = os.environ.get("DATABASE_URL")
    if admin:
        connection = await asyncpg.connect(admin)
        try:
            await connection.execute(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
            await connection.execute(f"CREATE DATABASE {DATABASE}")
            yield with_database(admin, DATABASE)
        finally:
            await connection.execute(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
            await connection.close()
        return
    from opspush.database import embedded

    with tempfile.TemporaryDirectory() as data:
        server = embedded.start(Path(data) / "pgdata", delete_on_stop=True)
        try:
            yield server.dsn
        finally:
            server.stop()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.status, response.read()


async def cli(command: str, *args: str, env: dict[str, str] | None = None) -> str:
    done = await asyncio.to_thread(
        subprocess.run, [command, *args], env=env, check=True, capture_output=True, text=True
    )
    return done.stdout.strip()


async def stop(process: asyncio.subprocess.Process, name: str = "serve") -> None:
    process.terminate()
    code = await asyncio.wait_for(process.wait(), 30)
    step(f"opspush {name} stopped: exit {code}")


async def wait_healthy(base: str, process: asyncio.subprocess.Process) -> None:
    for _ in range(300):
        if process.returncode is not None:
            raise SystemExit(f"opspush exited with {process.returncode}")
        try:
            if get(f"{base}/healthz")[0] == 200:
                return
        except OSError:
            pass
        await asyncio.sleep(0.1)
    raise SystemExit("opspush did not answer /healthz")


async def main(command: str) -> None:
    step(f"import opspush: {opspush.__file__}")
    if "site-packages" not in opspush.__file__:
        raise SystemExit("opspush was not imported from the installed wheel")
    step(f"opspush --version: {await cli(command, '--version')}")
    async with AsyncExitStack() as stack:
        dsn = await stack.enter_async_context(database())
        env = {**os.environ, "DATABASE_URL": dsn, "OPSPUSH_SECRET": SECRET}
        step(f"opspush migrate: {await cli(command, 'migrate', env=env)}")

        pool = await create_pool(dsn, 2)
        stack.push_async_callback(pool.close)
        async with pool.acquire() as connection:
            ids = await seed(connection)
        run_id = await Simulator(pool, ids, seed_value=1).start_showcase_run()

        port = free_port()
        base = f"http://127.0.0.1:{port}"
        process = await asyncio.create_subprocess_exec(
            command, "serve", "--port", str(port), env=env
        )
        stack.push_async_callback(stop, process)
        await wait_healthy(base, process)
        step(f"opspush serve: {base} healthy")
        pages = (f"/wall/{ids.workspace_id}", f"/runs/{run_id}", "/static/opspush.js")
        for path in (*pages, "/static/vendor/pusher-8.6.0.min.js"):
            status, body = await asyncio.to_thread(get, base + path)
            step(f"GET {path}: {status}, {len(body)} bytes")
        token = mint_token(ids.owner_id, SECRET)
        async with connect(f"ws://127.0.0.1:{port}/ws", token) as client:
            states: Any = client.watch(f"run:{run_id}")
            state = await asyncio.wait_for(anext(states), 30)
            await states.aclose()
        data = state["data"]
        step(f"WebSocket run:{run_id}: state {data['status']}, {data['progress']}")
    await demo_attach(command)
    print("wheel smoke test: OK", flush=True)


async def demo_attach(command: str) -> None:
    """`opspush demo --attach` as a new user runs it: a fresh HOME, no DATABASE_URL (so an
    embedded PostgreSQL), the Laravel example read from the package; then a state of the
    run in flight it links."""
    with tempfile.TemporaryDirectory() as home:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OPSPUSH_")}
        env.pop("DATABASE_URL", None)
        env["HOME"] = home
        port = free_port()
        process = await asyncio.create_subprocess_exec(
            command, "demo", "--attach", "--port", str(port), env=env,
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            links = await asyncio.wait_for(demo_links(process), 120)
            await wait_healthy(f"http://127.0.0.1:{port}", process)  # links come first
            run = int(links["run"])
            async with connect(f"ws://127.0.0.1:{port}/ws", links["token"]) as client:
                states: Any = client.watch(f"run:{run}")
                state = await asyncio.wait_for(anext(states), 30)
                await states.aclose()
            data = state["data"]
            step(f"opspush demo --attach: run:{run} {data['status']}, {data['progress']}")
            if data["status"] != "running":
                raise SystemExit("the run the demo links is not in flight")
        finally:
            await stop(process, "demo --attach")


async def demo_links(process: asyncio.subprocess.Process) -> dict[str, str]:
    """The run in flight and the token, from the lines the demo prints."""
    assert process.stdout is not None
    found: dict[str, str] = {}
    patterns = {
        "run": r"a run in flight: +\S+/runs/(\d+)#",
        "token": r"token \(user \d+, owner, 12 h\): (\S+)",
    }
    while len(found) < len(patterns):
        line = (await process.stdout.readline()).decode()
        if not line:
            raise SystemExit(f"opspush demo --attach exited with {await process.wait()}")
        for name, pattern in patterns.items():
            match = re.search(pattern, line)
            if match:
                found[name] = match.group(1)
    return found


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
