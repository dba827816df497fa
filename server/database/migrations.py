"""`opspush migrate`: apply the numbered files of `sql/` once each, in order.

Applied versions are recorded in `schema_migrations`. An advisory lock serialises
concurrent runs (two replicas starting together), and each file applies in its own
transaction, so a failure leaves the database at the last good version.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from ..resources import sql_dir
from .mapping import quote

_LOCK_KEY = 0x6F70737075736821  # any constant shared by all opspush processes
_NAME = re.compile(r"^(\d+)_[\w-]+\.sql$")


@dataclass(frozen=True)
class Migration:
    version: str
    path: Path


def discover(directory: Path | None = None) -> list[Migration]:
    directory = directory or sql_dir()
    found = []
    for path in sorted(directory.glob("*.sql")):
        match = _NAME.match(path.name)
        if match:
            found.append(Migration(version=path.stem, path=path))
    if not found:
        raise FileNotFoundError(f"no migrations found in {directory}")
    return found


def schema_problem(applied: set[str] | None, known: list[str]) -> str | None:
    """What keeps opspush from serving a database with these migrations `applied` (None: no
    `schema_migrations` at all), against the `known` ones of this version; None if nothing.

    Versions the code does not know are fine: a newer opspush migrated it, and migrations
    only add, so a replica not yet upgraded keeps serving during a rolling deploy.
    """
    if applied is None:
        return "has no opspush schema"
    missing = [version for version in known if version not in applied]
    if not missing:
        return None
    if not applied:
        return "has no opspush schema"
    return f"has an opspush schema older than this opspush (without {', '.join(missing)})"


async def applied_versions(connection: asyncpg.Connection) -> set[str] | None:
    """The migrations recorded in this database (None: no `schema_migrations`)."""
    if not await connection.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL"):
        return None
    rows = await connection.fetch("SELECT version FROM schema_migrations")
    return {row["version"] for row in rows}


async def migrate(dsn: str, directory: Path | None = None) -> list[str]:
    """Apply what is missing; return the versions applied now."""
    migrations = discover(directory)
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
        try:
            await connection.execute(
                """CREATE TABLE IF NOT EXISTS schema_migrations (
                       version    text PRIMARY KEY,
                       applied_at timestamptz NOT NULL DEFAULT now())"""
            )
            rows = await connection.fetch("SELECT version FROM schema_migrations")
            applied = {row["version"] for row in rows}
            done = []
            for migration in migrations:
                if migration.version in applied:
                    continue
                async with connection.transaction():
                    await connection.execute(migration.path.read_text())
                    await connection.execute(
                        "INSERT INTO schema_migrations (version) VALUES ($1)", migration.version
                    )
                done.append(migration.version)
            return done
        finally:
            await connection.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)
    finally:
        await connection.close()


def with_database(dsn: str, name: str) -> str:
    """The same server's URL, for another database."""
    return urlunsplit(urlsplit(dsn)._replace(path=f"/{name}"))


async def new_database(admin_dsn: str, name: str, *, replace: bool) -> str:
    """An empty database beside `admin_dsn`'s (dropped first when `replace`); its URL."""
    admin = await asyncpg.connect(admin_dsn)
    try:
        if replace:
            await admin.execute(f"DROP DATABASE IF EXISTS {quote(name)} WITH (FORCE)")
        await admin.execute(f"CREATE DATABASE {quote(name)}")
    finally:
        await admin.close()
    return with_database(admin_dsn, name)


async def create_database(admin_dsn: str, name: str, *, replace: bool = False) -> str:
    """Create a database beside `admin_dsn`'s, migrate it, and return its URL (tests, bench).

    `pg_stat_statements` is enabled in it where the server preloads the module, so that the
    database's own statement counts can be read there.
    """
    dsn = await new_database(admin_dsn, name, replace=replace)
    await migrate(dsn)
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        await connection.fetchval("SELECT count(*) FROM pg_stat_statements")
    except asyncpg.PostgresError:  # not preloaded on this server
        await connection.execute("DROP EXTENSION IF EXISTS pg_stat_statements")
    finally:
        await connection.close()
    return dsn
