"""`opspush attach`, `opspush detach` and `opspush demo --attach`: the I/O around
attach/attach.py."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable

import asyncpg

from ..attach import attach
from ..config import ConfigError, database_url_only
from ..database.mapping import Mapping, MappingError, load
from .database_errors import CONNECT_TIMEOUT, guarded

EXIT_UNUSABLE = 2


def _mapping(path: str) -> Mapping:
    try:
        return load(path)
    except MappingError as error:
        raise ConfigError(str(error)) from None


def say(line: str) -> None:
    print(line, flush=True)


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


async def _connect(dsn: str) -> asyncpg.Connection:
    """A connection, or the one line saying why the database cannot be reached."""
    connection: asyncpg.Connection = await guarded(
        dsn, lambda: asyncpg.connect(dsn, timeout=CONNECT_TIMEOUT)
    )
    return connection


def attach_command(
    config: str, *, check: bool, triggers: bool, dsn: Callable[[], str] = database_url_only
) -> int:
    mapping = _mapping(config)  # the file first: its mistakes need no database to find
    return asyncio.run(_attach(dsn(), mapping, check=check, triggers=triggers, say=say))


async def _attach(
    dsn: str, mapping: Mapping, *, check: bool, triggers: bool, say: Callable[[str], None]
) -> int:
    db = await _connect(dsn)
    try:
        if check:
            # A read-only transaction: --check cannot write, whatever it runs.
            async with db.transaction(readonly=True):
                report = await attach.resolve(db, mapping)
        else:
            try:
                report = await attach.attach(db, mapping, triggers=triggers, say=say)
            except attach.Refused as refused:
                report = refused.report
    finally:
        await db.close()
    for problem in report.problems:
        print(f"error: {problem}", file=sys.stderr)
    for warning in report.warnings:
        say(f"warning: {warning}")
    if report.problems:
        print(
            f"opspush: {mapping.path}: not usable ({plural(len(report.problems), 'problem')}); "
            "nothing was written",
            file=sys.stderr,
        )
        return EXIT_UNUSABLE
    if check:
        say(f"{mapping.path}: usable ({plural(len(report.tables), 'table')} resolved)")
    return 0


def detach_command(config: str, *, dsn: Callable[[], str] = database_url_only) -> int:
    mapping = _mapping(config)  # the file first, as for attach
    url = dsn()

    async def go() -> int:
        db = await _connect(url)
        try:
            if not await attach.detach(db, mapping, say=say):
                say(f"schema {mapping.schema} does not exist: nothing to detach")
        except attach.Refused as refused:
            for problem in refused.report.problems:
                print(f"error: {problem}", file=sys.stderr)
            return EXIT_UNUSABLE
        finally:
            await db.close()
        return 0

    return asyncio.run(go())
