"""The `opspush` command: serve, migrate, attach, detach, token, demo, simulate, display."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import secrets
import socket
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from .. import __version__
from ..config import MAX_WORKERS, ConfigError, Settings, database_url_only, default_data_dir
from .logs import configure_logging

DEFAULT_TOKEN_TTL = 3600  # `token --ttl` without --channel, if OPSPUSH_MAX_TOKEN_TTL allows


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        result: int = args.func(args)
        return result
    except ConfigError as error:
        print(f"opspush: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


SERVE_ENV = """environment:
  DATABASE_URL       postgresql://user:password@host:port/database; unset: an embedded
                     PostgreSQL in OPSPUSH_DATA_DIR (default ~/.local/share/opspush/pgdata)
  OPSPUSH_SECRET     required: the HS256 secret shared with the host application (32+ chars)
  OPSPUSH_HOST, OPSPUSH_PORT, OPSPUSH_ALLOWED_ORIGINS, OPSPUSH_LOG_LEVEL, and the limits
  (OPSPUSH_MAX_*, OPSPUSH_RATE_*, ...): see the README's Configuration table"""

DEMO_ENV = """environment:
  DATABASE_URL       unset (the default): an embedded PostgreSQL in OPSPUSH_DATA_DIR
                     (default ~/.local/share/opspush/demo)
  OPSPUSH_SECRET     unset: one made once and kept in <OPSPUSH_DATA_DIR>-secret (the Pusher
                     secret likewise, in <OPSPUSH_DATA_DIR>-pusher-secret)
  OPSPUSH_HOST, OPSPUSH_PORT, OPSPUSH_LOG_LEVEL
reset the demo's data (both modes, and their secrets): stop it, then
  rm -rf ~/.local/share/opspush/demo*"""


def _parser() -> argparse.ArgumentParser:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="opspush",
        description=__doc__,
        epilog="Each command's --help lists the environment variables it reads.",
    )
    parser.add_argument("--version", action="version", version=f"opspush {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser(
        "serve", help="serve WebSockets and pages", epilog=SERVE_ENV, formatter_class=raw
    )
    serve.add_argument("--host", help="overrides OPSPUSH_HOST")
    serve.add_argument("--port", type=int, help="overrides OPSPUSH_PORT")
    serve.add_argument(
        "--workers",
        type=int,
        help="worker processes on one port (overrides OPSPUSH_WORKERS; 0: one per core)",
    )
    serve.set_defaults(func=_serve)

    migrate = commands.add_parser(
        "migrate",
        help="apply the sql/ migrations to DATABASE_URL",
        epilog="environment:\n  DATABASE_URL       required: postgresql://user:password@host:port/db",
        formatter_class=raw,
    )
    migrate.set_defaults(func=_migrate)

    attach = commands.add_parser(
        "attach", help="create or update opspush's schema of views in the host database"
    )
    attach.add_argument("--config", required=True, help="the mapping file (TOML)")
    mode = attach.add_mutually_exclusive_group()
    mode.add_argument(
        "--triggers", action="store_true", help="also (re)create the notification triggers"
    )
    mode.add_argument("--check", action="store_true", help="check the mapping; change nothing")
    attach.set_defaults(func=_attach)

    detach = commands.add_parser("detach", help="drop opspush's schema and its triggers")
    detach.add_argument("--config", required=True, help="the mapping file (TOML)")
    detach.set_defaults(func=_detach)

    token = commands.add_parser(
        "token",
        help="mint a token for a user (OPSPUSH_SECRET)",
        epilog="environment:\n  OPSPUSH_SECRET     required: the secret the service verifies with",
        formatter_class=raw,
    )
    token.add_argument("--user", type=int, required=True, help="the user id (1 to 2^63-1)")
    token.add_argument(
        "--ttl",
        type=int,
        help=f"seconds (default {DEFAULT_TOKEN_TTL}; with --channel: "
        "OPSPUSH_MAX_CHANNEL_TOKEN_TTL, 900 by default)",
    )
    token.add_argument(
        "--channel",
        action="append",
        dest="channels",
        help="grant this channel only (repeatable; a `channels` token: the README's "
        "'Access decided by the host')",
    )
    token.set_defaults(func=_token)

    demo = commands.add_parser(
        "demo", help="embedded database, simulator and server", epilog=DEMO_ENV, formatter_class=raw
    )
    demo.add_argument("--host", help="overrides OPSPUSH_HOST")
    demo.add_argument("--port", type=int, help="overrides OPSPUSH_PORT")
    demo.add_argument(
        "--attach",
        action="store_true",
        help="attach mode: a seeded Laravel-shaped console database, served through views",
    )
    demo.set_defaults(func=_demo)

    simulate = commands.add_parser(
        "simulate",
        help="run only the demo simulator",
        epilog="environment:\n  DATABASE_URL       required: the (migrated) database to write to",
        formatter_class=raw,
    )
    simulate.set_defaults(func=_simulate)

    from .display_cli import add_parser as add_display_parser

    add_display_parser(commands)
    return parser


def _settings(args: argparse.Namespace, env: dict[str, str] | None = None) -> Settings:
    settings = Settings.from_env(env)
    changes: dict[str, Any] = {}
    if getattr(args, "host", None):
        changes["host"] = args.host
    if getattr(args, "port", None) is not None:
        if not 0 <= args.port <= 65535:
            raise ConfigError(f"--port must be between 0 and 65535, not {args.port}")
        changes["port"] = args.port
    if getattr(args, "workers", None) is not None:
        if not 0 <= args.workers <= MAX_WORKERS:
            raise ConfigError(f"--workers must be between 0 and {MAX_WORKERS}, not {args.workers}")
        changes["workers"] = args.workers
    return settings.with_overrides(**changes) if changes else settings


@contextlib.contextmanager
def database(settings: Settings) -> Iterator[str]:
    """DATABASE_URL, or an embedded PostgreSQL started for the lifetime of the block."""
    if settings.database_url:
        yield settings.database_url
        return
    from ..database import embedded

    try:
        server = embedded.start(settings.data_dir)
    except embedded.EmbeddedUnavailable as error:
        raise ConfigError(str(error)) from None
    try:
        yield server.dsn
    finally:
        server.stop()


@contextlib.contextmanager
def listening(settings: Settings, workers: int = 1) -> Iterator[tuple[Settings, socket.socket]]:
    """The port, bound before anything starts or prints, so that a port in use or a host that
    does not resolve is the one line said; the settings name the port bound (0: the one
    picked, which the demo's links need)."""
    from .runner import bind
    from .supervisor import reserve

    host, port = settings.host, settings.port
    sock = reserve(host, port) if workers > 1 else bind(host, port)
    try:
        yield settings.with_overrides(port=sock.getsockname()[1]), sock
    finally:
        sock.close()


def run_server(
    settings: Settings,
    dsn: str,
    sock: socket.socket,
    *,
    workers: int = 1,
    extra: Any = None,
    routes: list[Any] | None = None,
) -> None:
    """Serve on `sock` (from `listening`) in this process, or as the supervisor of `workers`
    worker processes."""
    from . import descriptors
    from .runner import serve_app
    from .supervisor import Supervisor

    descriptors.report(descriptors.raise_limit(), workers, settings.expected_sockets)
    if workers > 1:
        Supervisor(settings, dsn, workers, reserved=sock).run()
    else:
        serve_app(settings, dsn, on_startup=extra, extra_routes=routes, sockets=[sock])


def _serve(args: argparse.Namespace) -> int:
    from .supervisor import worker_count

    settings = _settings(args)
    configure_logging(settings.log_level)
    if settings.attached and not settings.database_url:
        raise ConfigError("OPSPUSH_CONFIG (attach mode) needs DATABASE_URL: the host's database")
    workers = worker_count(settings.workers)
    with listening(settings, workers) as (settings, sock), database(settings) as dsn:
        if settings.database_url:
            _check_database(dsn, settings)  # one line and exit 2, not a failed start-up
        else:
            _apply_migrations(dsn)  # the embedded database is ours to keep current
        run_server(settings, dsn, sock, workers=workers)
    return 0


def _check_database(dsn: str, settings: Settings) -> None:
    """Reachable, and holding the schema this opspush reads (migrated, or attached)."""
    from . import database_errors

    async def check() -> None:
        await database_errors.check(dsn)
        await database_errors.check_schema(dsn, settings.attach_schema, settings.config_file)

    asyncio.run(check())


def _apply_migrations(dsn: str) -> list[str]:
    from ..database.migrations import migrate
    from .database_errors import guarded

    return asyncio.run(guarded(dsn, lambda: migrate(dsn)))


def _migrate(args: argparse.Namespace) -> int:
    if os.environ.get("OPSPUSH_CONFIG"):
        raise ConfigError(
            "migrate refused: OPSPUSH_CONFIG is set (attach mode), and the host's schema is not "
            "opspush's to migrate; run `opspush attach --config FILE` instead"
        )
    applied = _apply_migrations(database_url_only())
    print(f"applied: {', '.join(applied)}" if applied else "up to date")
    return 0


def _token(args: argparse.Namespace) -> int:
    from ..core.auth import mint_token
    from ..core.channels import MAX_ID

    settings = Settings.from_env()
    if not 1 <= args.user <= MAX_ID:
        raise ConfigError(f"--user must be a user id from 1 to {MAX_ID}, not {args.user}")
    if args.ttl is None:  # an hour, or as long as a channels token may live; never past the cap
        cap = settings.max_channel_token_ttl if args.channels else DEFAULT_TOKEN_TTL
        args.ttl = min(cap, settings.max_token_ttl)
    if args.ttl < 1:
        raise ConfigError(f"--ttl must be at least 1 second, not {args.ttl}")
    if args.ttl > settings.max_token_ttl:
        raise ConfigError(
            f"--ttl must be at most OPSPUSH_MAX_TOKEN_TTL ({settings.max_token_ttl} s): "
            "a longer-lived token would be refused"
        )
    if args.channels:
        from ..core.channels import ChannelError, parse_channel

        for name in args.channels:
            try:
                parse_channel(name)
            except ChannelError as error:
                raise ConfigError(f"--channel {name!r}: {error.message}") from None
        if args.ttl > settings.max_channel_token_ttl:
            raise ConfigError(
                f"--ttl: a token with --channel lives at most {settings.max_channel_token_ttl:g} s "
                "(OPSPUSH_MAX_CHANNEL_TOKEN_TTL)"
            )
    print(mint_token(args.user, settings.secret, ttl=args.ttl, channels=args.channels))
    return 0


def _attach(args: argparse.Namespace) -> int:
    from .attach_cli import attach_command

    return attach_command(args.config, check=args.check, triggers=args.triggers)


def _detach(args: argparse.Namespace) -> int:
    from .attach_cli import detach_command

    return detach_command(args.config)


def demo_data_dir() -> str:
    return os.path.join(os.path.dirname(default_data_dir()), "demo")


def demo_secret(data_dir: str, name: str = "secret") -> str:
    """A secret of the demo's, kept beside its data (`<data_dir>-<name>`), so that the links
    and the `.env` values it printed keep working after a restart: made once, read after."""
    path = Path(f"{data_dir.rstrip('/')}-{name}")
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(32)
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as file:
        file.write(secret + "\n")
    return secret


def _demo(args: argparse.Namespace) -> int:
    if args.attach:
        return _demo_attach(args)
    env = dict(os.environ)
    env.setdefault("OPSPUSH_DATA_DIR", demo_data_dir())
    if not env.get("OPSPUSH_SECRET"):
        env["OPSPUSH_SECRET"] = demo_secret(env["OPSPUSH_DATA_DIR"])
    # The Pusher endpoint too, so that the Echo page works; the values are printed.
    if not any(env.get(name) for name in ("OPSPUSH_PUSHER_APP_ID", "OPSPUSH_PUSHER_KEY")):
        env["OPSPUSH_PUSHER_APP_ID"] = "opspush-demo"
        env["OPSPUSH_PUSHER_KEY"] = "opspush-demo-key"
        env["OPSPUSH_PUSHER_SECRET"] = demo_secret(env["OPSPUSH_DATA_DIR"], "pusher-secret")
    settings = _settings(args, env)
    configure_logging(settings.log_level)
    from .demo import broadcasting_auth_route

    routes = [broadcasting_auth_route(settings.pusher)] if settings.pusher else []
    with listening(settings) as (settings, sock), database(settings) as dsn:
        _apply_migrations(dsn)
        run_server(settings, dsn, sock, extra=_demo_startup(settings), routes=routes)
    return 0


def _demo_attach(args: argparse.Namespace) -> int:
    """The demo in attach mode: a Laravel-shaped console database, seeded and kept moving
    by a simulator writing its tables, attached with triggers, served by a least-privilege
    role that may read only opspush's views."""
    from ..attach import host_demo
    from .attach_cli import say

    env = dict(os.environ)
    env.setdefault(
        "OPSPUSH_DATA_DIR", os.path.join(os.path.dirname(default_data_dir()), "demo-attach")
    )
    if not env.get("OPSPUSH_SECRET"):  # kept beside the data: the links survive a restart
        env["OPSPUSH_SECRET"] = demo_secret(env["OPSPUSH_DATA_DIR"])
    env["OPSPUSH_CONFIG"] = str(host_demo.MAPPING)
    settings = _settings(args, env)
    configure_logging(settings.log_level)
    with listening(settings) as (settings, sock), database(settings) as admin_dsn:
        host = asyncio.run(host_demo.prepare(admin_dsn, say=say))
        run_server(
            settings,
            host.serving_dsn,
            sock,
            extra=host_demo.startup(settings, host, links=_demo_links),
        )
    return 0


def _demo_startup(settings: Settings) -> Any:
    """Seed, start the simulator beside the server, and print where to look."""
    from .demo import Simulator, seed

    async def start(service: Any) -> Any:
        pool = service.pool
        async with pool.acquire() as connection:
            ids = await seed(connection)
        simulator = Simulator(pool, ids)
        moving = await simulator.start_showcase_run()  # in flight for minutes, not seconds
        _demo_links(settings, ids.workspace_id, ids.tenant_ids, ids.owner_id, moving)
        return simulator.run()

    return start


def _demo_links(
    settings: Settings,
    workspace_id: int,
    tenant_ids: list[int],
    owner_id: int,
    run_id: int,
) -> None:
    """Where to look: the wall, a run still in flight, a card, the index, and the token."""
    from ..core.auth import mint_token

    token = mint_token(owner_id, settings.secret, ttl=12 * 3600)
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
    base = f"http://{host}:{settings.port}"
    mode = " in attach mode" if settings.attached else ""
    data = (settings.database_url and "DATABASE_URL") or settings.data_dir
    print(
        f"\nopspush demo is running{mode} (data: {data})\n"
        f"  wall (every live run): {base}/wall/{workspace_id}#token={token}\n"
        f"  a run in flight:       {base}/runs/{run_id}#token={token}\n"
        f"  review pack:           {base}/tenants/{tenant_ids[0]}/review-pack#token={token}\n"
        f"  all pages:             {base}/#token={token}\n"
        f"  WebSocket:             ws://{host}:{settings.port}/ws\n"
        f"  token (user {owner_id}, owner, 12 h): {token}\n"
        + _demo_pusher_lines(settings, base, run_id)
        + "The linked run lasts about five minutes; the others finish within a minute or so,\n"
        "and the wall always lists the live ones. The links keep working across restarts\n"
        "(the secret is kept beside the data).\n",
        flush=True,
    )


def _demo_pusher_lines(settings: Settings, base: str, run_id: int) -> str:
    app = settings.pusher
    if app is None:
        return ""
    auth = f"{base}/demo/broadcasting/auth"
    return (
        f"  Echo page:   {base}/echo/runs/{run_id}#key={app.key}&auth={auth}\n"
        "  Pusher (the host's .env: BROADCAST_CONNECTION=pusher, PUSHER_HOST/PORT as above):\n"
        f"    OPSPUSH_PUSHER_APP_ID={app.app_id}\n"
        f"    OPSPUSH_PUSHER_KEY={app.key}\n"
        f"    OPSPUSH_PUSHER_SECRET={app.secret}\n"
    )


def _simulate(args: argparse.Namespace) -> int:
    from ..database.storage import create_pool
    from .database_errors import guarded
    from .demo import DEMO_WORKSPACE, Simulator, seed

    configure_logging(os.environ.get("OPSPUSH_LOG_LEVEL") or "info")
    url = database_url_only()
    log = logging.getLogger("opspush.simulate")

    async def go() -> None:
        pool = await create_pool(url, 2)
        try:
            async with pool.acquire() as connection:
                ids = await seed(connection)
            log.info(
                "simulating the console of workspace %d (%s): runs and review packs move a step "
                "a second; a summary every minute; Ctrl-C to stop",
                ids.workspace_id,
                DEMO_WORKSPACE,
            )
            await Simulator(pool, ids).run(report_every=60, report=log.info)
        finally:
            await pool.close()

    asyncio.run(guarded(url, go))  # the simulator's own steps log and go on
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
