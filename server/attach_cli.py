"""`opspush attach`, `opspush detach` and `opspush demo --attach`: the I/O around attach.py."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable

import asyncpg

from . import attach
from .config import ConfigError, default_data_dir
from .mapping import Mapping, MappingError, load

EXIT_UNUSABLE = 2


def _mapping(path: str) -> Mapping:
    try:
        return load(path)
    except MappingError as error:
        raise ConfigError(str(error)) from None


def _say(line: str) -> None:
    print(line, flush=True)


def attach_command(dsn: str, config: str, *, check: bool, triggers: bool) -> int:
    mapping = _mapping(config)
    return asyncio.run(_attach(dsn, mapping, check=check, triggers=triggers, say=_say))


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
            if not await attach.detach(db, mapping, say=_say):
                _say(f"schema {mapping.schema} does not exist: nothing to detach")
        except attach.Refused as refused:
            for problem in refused.report.problems:
                print(f"error: {problem}", file=sys.stderr)
            return EXIT_UNUSABLE
        finally:
            await db.close()
        return 0

    return asyncio.run(go())


def demo_attach(args: argparse.Namespace) -> int:
    """The demo in attach mode: a Laravel-shaped console database, seeded and kept moving
    by a simulator writing its tables, attached with triggers, served by a least-privilege
    role that may read only opspush's views."""
    from . import host_demo
    from .cli import _demo_links, _settings, configure_logging, database, demo_secret, run_server

    env = dict(os.environ)
    env.setdefault(
        "OPSPUSH_DATA_DIR", os.path.join(os.path.dirname(default_data_dir()), "demo-attach")
    )
    if not env.get("OPSPUSH_SECRET"):  # kept beside the data: the links survive a restart
        env["OPSPUSH_SECRET"] = demo_secret(env["OPSPUSH_DATA_DIR"])
    env["OPSPUSH_CONFIG"] = str(host_demo.MAPPING)
    settings = _settings(args, env)
    configure_logging(settings.log_level)
    with database(settings) as admin_dsn:
        host = asyncio.run(host_demo.prepare(admin_dsn, say=_say))
        run_server(
            settings,
            host.serving_dsn,
            extra=host_demo.startup(settings, host, links=_demo_links),
        )
    return 0
