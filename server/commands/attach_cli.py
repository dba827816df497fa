"""`opspush attach`, `opspush detach` and `opspush demo --attach`: the I/O around
attach/attach.py."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable

import asyncpg

from ..attach import attach
from ..config import ConfigError
from ..database.mapping import Mapping, MappingError, load

EXIT_UNUSABLE = 2


def _mapping(path: str) -> Mapping:
    try:
        return load(path)
    except MappingError as error:
        raise ConfigError(str(error)) from None


def say(line: str) -> None:
    print(line, flush=True)


def attach_command(dsn: str, config: str, *, check: bool, triggers: bool) -> int:
    mapping = _mapping(config)
    return asyncio.run(_attach(dsn, mapping, check=check, triggers=triggers, say=say))


async def _attach(
    dsn: str, mapping: Mapping, *, check: bool, triggers: bool, say: Callable[[str], None]
) -> int:
    db = await asyncpg.connect(dsn)
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
            f"opspush: {mapping.path}: not usable ({len(report.problems)} problems); "
            "nothing was written",
            file=sys.stderr,
        )
        return EXIT_UNUSABLE
    if check:
        say(f"{mapping.path}: usable ({len(report.tables)} tables resolved)")
    return 0


def detach_command(dsn: str, config: str) -> int:
    mapping = _mapping(config)

    async def go() -> int:
        db = await asyncpg.connect(dsn)
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
