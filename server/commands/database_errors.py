"""One line for a database that cannot be reached or used: what went wrong and where.

`opspush serve`, `migrate`, `demo` and `simulate` check the database before they start and
print this line (exit 2) instead of a traceback. The line names the user, host, port and
database, never the password.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Awaitable, Callable
from typing import TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

import asyncpg

from ..config import ConfigError

T = TypeVar("T")
CONNECT_TIMEOUT = 10.0

# What a connection attempt or a migration can raise for a bad or unreachable database.
ERRORS = (OSError, TimeoutError, ValueError, asyncpg.PostgresError, asyncpg.InterfaceError)


class DatabaseError(ConfigError):
    """Printed as one line by the CLI, which exits 2."""


def server_of(dsn: str) -> str:
    """`host:port` (or the socket folder), from a URL that urlsplit accepts."""
    parts = urlsplit(dsn)
    host = parts.hostname or parse_qs(parts.query).get("host", ["localhost"])[0]
    return f"{host}:{parts.port or 5432}"


def where(dsn: str) -> str:
    """`user@host:port/database`, never the password."""
    parts = urlsplit(dsn)
    user = unquote(parts.username or "") or "(default user)"
    database = unquote(parts.path.lstrip("/")) or user
    return f"{user}@{server_of(dsn)}/{database}"


def describe(error: BaseException, dsn: str) -> str:
    try:
        place, server = where(dsn), server_of(dsn)
    except ValueError as bad:
        return f"DATABASE_URL is not a valid URL ({bad})"
    parts = urlsplit(dsn)
    if isinstance(error, asyncpg.InvalidPasswordError):
        return f"the database at {server} refused the password of user {parts.username!r}"
    if isinstance(error, asyncpg.InvalidCatalogNameError):
        return f"the database server at {server} has no database {place.rsplit('/', 1)[1]!r}"
    if isinstance(error, asyncpg.PostgresError):
        return f"the database at {place} answered: {_first_line(error)}"
    if isinstance(error, socket.gaierror):
        return f"unknown database host {parts.hostname!r} ({error.strerror})"
    if isinstance(error, TimeoutError):
        return f"no answer from the database at {server} within {CONNECT_TIMEOUT:g} s"
    if isinstance(error, OSError):
        if error.errno == errno.ECONNREFUSED or "Connect call failed" in str(error):
            return f"cannot connect to the database at {server}: connection refused"
        return f"cannot connect to the database at {server}: {error.strerror or error}"
    if isinstance(error, ValueError):
        return f"DATABASE_URL is not valid: {_first_line(error)}"
    return f"the database at {place}: {_first_line(error)}"


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


async def check(dsn: str) -> None:
    """Open and close one connection; DatabaseError with the one line if that fails."""
    await guarded(dsn, lambda: _connect_and_close(dsn))


async def _connect_and_close(dsn: str) -> None:
    connection = await asyncpg.connect(dsn, timeout=CONNECT_TIMEOUT)
    await connection.close()


async def check_schema(dsn: str, attach_schema: str | None, config_file: str | None) -> None:
    """DatabaseError with one line when the database has no opspush schema, or an older one:
    standalone, its migrations (`opspush migrate`); attach mode, the views in `attach_schema`
    (`opspush attach`). Served as it is, every read would fail, over and over."""
    problem = await guarded(dsn, lambda: _schema_problem(dsn, attach_schema, config_file))
    if problem is not None:
        raise DatabaseError(f"the database {where(dsn)} {problem}")


async def _schema_problem(
    dsn: str, attach_schema: str | None, config_file: str | None
) -> str | None:
    from ..attach.attach import view_columns, views_problem
    from ..database.migrations import applied_versions, discover, schema_problem

    connection = await asyncpg.connect(dsn, timeout=CONNECT_TIMEOUT)
    try:
        if attach_schema is not None:
            found = await view_columns(connection, attach_schema)
            problem = views_problem(found, attach_schema)
            remedy = f"run `opspush attach --config {config_file}`"
        else:
            try:
                applied = await applied_versions(connection)
            except asyncpg.InsufficientPrivilegeError:
                return None  # a role that may not read the ledger: its reads will tell
            problem = schema_problem(applied, [m.version for m in discover()])
            remedy = "run `opspush migrate`"
    finally:
        await connection.close()
    return None if problem is None else f"{problem}: {remedy}"


async def guarded(dsn: str, call: Callable[[], Awaitable[T]]) -> T:
    """`call()`, with the errors of a bad or unreachable database as DatabaseError."""
    try:
        return await call()
    except ERRORS as error:
        raise DatabaseError(describe(error, dsn)) from None
