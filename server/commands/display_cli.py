"""`opspush display approve|list|revoke`: wall displays from the command line (docs/displays.md).

Every refusal is one line on stderr and exit 2. In attach mode (OPSPUSH_CONFIG set), the
tables are those of opspush's schema in the host database.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg

from ..config import ConfigError, attach_schema, database_url_only
from ..database import displays
from ..database.storage import create_pool
from .database_errors import guarded

T = TypeVar("T")

MESSAGES = {
    "bad_request": "the code, --workspace and --name must be given (a name of 1 to 100 characters)",
    "not_found": "workspace {workspace}: not found, or user {user} is not a member of it",
    "forbidden": "user {user} may not watch the wall of workspace {workspace}",
    "rate_limited": "user {user} gave too many wrong codes: try again in a few minutes",
    "invalid_code": "no display is waiting with this code (mistyped, expired or used)",
}


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    display = commands.add_parser(
        "display",
        help="approve, list and revoke wall displays",
        epilog="environment:\n  DATABASE_URL       required; OPSPUSH_CONFIG: attach mode",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = display.add_subparsers(dest="action", required=True)
    approve = actions.add_parser("approve", help="approve the code a wall page shows")
    approve.add_argument("code", help="the code on the wall, XXXX-XXXX")
    approve.add_argument("--workspace", type=int, required=True, help="the wall's workspace id")
    approve.add_argument("--user", type=int, required=True, help="the approving user's id")
    approve.add_argument("--name", required=True, help="the display's name, e.g. 'NOC wall'")
    approve.set_defaults(func=_approve)
    listing = actions.add_parser("list", help="list the displays that are not revoked")
    listing.add_argument("--workspace", type=int, help="only this workspace's")
    listing.set_defaults(func=_list)
    revoke = actions.add_parser("revoke", help="revoke a display: its wall signs out at once")
    revoke.add_argument("id", type=int)
    revoke.set_defaults(func=_revoke)


def _run(call: Callable[[asyncpg.Pool], Awaitable[T]]) -> T:
    dsn = database_url_only()
    config = os.environ.get("OPSPUSH_CONFIG") or None
    schema = None if config is None else attach_schema(config)

    async def go() -> T:
        pool = await create_pool(dsn, 1, schema=schema)
        try:
            return await call(pool)
        finally:
            await pool.close()

    return asyncio.run(guarded(dsn, go))


def _approve(args: argparse.Namespace) -> int:
    if args.user < 1 or args.workspace < 1:
        raise ConfigError("--user and --workspace must be positive ids")

    async def go(pool: asyncpg.Pool) -> displays.DisplayRow | str:
        return await displays.approve_as(pool, args.user, args.code, args.workspace, args.name)

    result = _run(go)
    if isinstance(result, str):
        raise ConfigError(MESSAGES[result].format(user=args.user, workspace=args.workspace))
    print(
        f"approved display {result.id} ({result.name!r}) for the wall of workspace {args.workspace}"
    )
    return 0


def _list(args: argparse.Namespace) -> int:
    if args.workspace is not None and args.workspace < 1:
        raise ConfigError("--workspace must be a positive id")
    rows = _run(lambda pool: displays.listed(pool, args.workspace))
    if not rows:
        print("no displays")
        return 0
    print("id\tworkspace\tapprover\tname\tlast seen\taddress")
    for row in rows:
        seen = (
            "never" if row.last_seen_at is None else row.last_seen_at.isoformat(timespec="seconds")
        )
        print(
            f"{row.id}\t{row.workspace_id}\t{row.approver_id}\t{row.name}\t{seen}\t"
            f"{row.last_address or '-'}"
        )
    return 0


def _revoke(args: argparse.Namespace) -> int:
    if args.id < 1:
        raise ConfigError("the display id must be positive")
    if not _run(lambda pool: displays.revoke(pool, args.id)):
        raise ConfigError(f"no display {args.id} (or it was revoked already)")
    print(f"revoked display {args.id}")
    return 0
