"""The command line: configuration errors are one clear line; tokens; migrations."""

from __future__ import annotations

import asyncio
import fnmatch
import os
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import asyncpg
import jwt
import pytest
import websockets

from opspush import __version__ as opspush_version
from opspush.attach import host_demo
from opspush.commands.cli import demo_secret
from opspush.commands.database_errors import where
from opspush.commands.demo import Simulator, progress_line, seed
from opspush.config import ConfigError, Settings
from opspush.core.auth import verify_token
from opspush.core.outcomes import failure_reasons, outcome_from_counts
from opspush.database.mapping import DOMAIN
from opspush.database.migrations import create_database, discover, migrate, new_database
from opspush.database.storage import create_pool
from tests.conftest import free_socket


def opspush(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OPSPUSH_")}
    clean.pop("DATABASE_URL", None)
    return subprocess.run(
        [sys.executable, "-m", "opspush.commands.cli", *args],
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


SECRET = "a-secret-that-is-long-enough-for-hs256"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "OPSPUSH_SECRET is required"),
        ({"OPSPUSH_SECRET": "short"}, "at least 32 characters"),
        ({"OPSPUSH_SECRET": SECRET, "OPSPUSH_PORT": "eighty"}, "OPSPUSH_PORT must be a whole"),
        ({"OPSPUSH_SECRET": SECRET, "OPSPUSH_PORT": "70000"}, "between 0 and 65535"),
        ({"OPSPUSH_SECRET": SECRET, "DATABASE_URL": "mysql://x"}, "postgresql:// URL"),
        ({"OPSPUSH_SECRET": SECRET, "OPSPUSH_ALLOWED_ORIGINS": "*"}, "is not an origin"),
        (
            {
                "OPSPUSH_SECRET": SECRET,
                "OPSPUSH_ALLOWED_ORIGINS": "https://console.example.com:99999",
            },
            "'https://console.example.com:99999' is not an origin like https://console.example "
            "(the port must be a number from 1 to 65535)",
        ),
        (
            {
                "OPSPUSH_SECRET": SECRET,
                "OPSPUSH_ALLOWED_ORIGINS": "https://a.example, https://exa mple.com",
            },
            "'https://exa mple.com' is not an origin like https://console.example "
            "('exa mple.com' is not a host name or IP address)",
        ),
        (
            {"OPSPUSH_SECRET": SECRET, "OPSPUSH_ALLOWED_ORIGINS": "https://console.example:0"},
            "the port must be a number from 1 to 65535",
        ),
        (
            {"OPSPUSH_SECRET": SECRET, "OPSPUSH_ALLOWED_ORIGINS": "https://ops@console.example"},
            "no path, query or user",
        ),
        (
            {"OPSPUSH_SECRET": SECRET, "OPSPUSH_ALLOWED_ORIGINS": "http://10.0.0.300:8000"},
            "'10.0.0.300' is not a host name or IP address",
        ),
        ({"OPSPUSH_SECRET": SECRET, "OPSPUSH_NOTIFY": "maybe"}, "must be 1 or 0"),
        ({"OPSPUSH_SECRET": SECRET, "OPSPUSH_TRUST_PROXY": "1"}, "no longer takes 1"),
        ({"OPSPUSH_SECRET": SECRET, "OPSPUSH_TRUST_PROXY": "nginx"}, "not an IP address"),
        ({"OPSPUSH_SECRET": SECRET, "OPSPUSH_MAX_TOKEN_TTL": "0"}, "between 60 and"),
        ({"OPSPUSH_SECRET": SECRET, "OPSPUSH_METRICS_TOKEN": "short"}, "at least 16"),
        (
            {
                "OPSPUSH_SECRET": SECRET,
                "OPSPUSH_FRAME_ANCESTORS": "https://a.example; script-src *",
            },
            "OPSPUSH_FRAME_ANCESTORS",
        ),
    ],
)
def test_serve_refuses_bad_configuration_with_one_line(env: dict[str, str], message: str) -> None:
    result = opspush("serve", env=env)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
    assert result.stderr.startswith("opspush: ")


@pytest.fixture(scope="module")
def schemaless(postgres_server: dict[str, Any]) -> Iterator[dict[str, str]]:
    """Databases beside the suite's that opspush cannot serve as they are: one empty, one
    migrated only to its first version, one with views of an older `attach`."""
    admin_dsn = postgres_server["dsn"]
    names = {key: f"opspush_test_{key}_{uuid.uuid4().hex[:8]}" for key in ("empty", "old", "views")}
    first = discover()[0]

    async def create() -> dict[str, str]:
        dsns = {
            key: await new_database(admin_dsn, name, replace=True) for key, name in names.items()
        }
        old = await asyncpg.connect(dsns["old"])
        try:  # what `migrate` of the first version left
            await old.execute(first.path.read_text())
            await old.execute("CREATE TABLE schema_migrations (version text PRIMARY KEY)")
            await old.execute("INSERT INTO schema_migrations VALUES ($1)", first.version)
        finally:
            await old.close()
        views = await asyncpg.connect(dsns["views"])
        try:  # every view, but one without a column this opspush reads
            await views.execute("CREATE SCHEMA opspush")
            for table, columns in DOMAIN.items():
                selected = ", ".join(
                    f"NULL::text AS {column}"
                    for column in columns
                    if (table, column) != ("operation_runs", "updated_at")
                )
                await views.execute(f"CREATE VIEW opspush.{table} AS SELECT {selected}")
        finally:
            await views.close()
        return dsns

    async def drop() -> None:
        admin = await asyncpg.connect(admin_dsn)
        try:
            for name in names.values():
                await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()

    dsns = asyncio.run(create())
    try:
        yield {
            **dsns,
            "admin": admin_dsn,
            "old missing": ", ".join(m.version for m in discover()[1:]),
        }
    finally:
        asyncio.run(drop())


MAPPING = str(host_demo.MAPPING)
ATTACH = f"run `opspush attach --config {MAPPING}`"

# (what, arguments, DATABASE_URL (a key of `schemaless`), OPSPUSH_CONFIG, the line's start).
# {port} is a port in use (listening); {where} DATABASE_URL's user@host:port/database.
BAD_INPUT = [
    (
        "port in use",
        ["serve", "--port", "{port}"],
        "admin",
        None,
        "127.0.0.1:{port} is already in use",
    ),
    (
        "port in use, workers",
        ["serve", "--port", "{port}", "--workers", "2"],
        "admin",
        None,
        "127.0.0.1:{port} is already in use",
    ),
    (
        "port in use, demo",
        ["demo", "--port", "{port}"],
        "admin",
        None,
        "127.0.0.1:{port} is already in use",
    ),
    (
        "port in use, demo --attach",
        ["demo", "--attach", "--port", "{port}"],
        "admin",
        None,
        "127.0.0.1:{port} is already in use",
    ),
    (
        "host does not resolve",
        ["serve", "--host", "999.1.1.1", "--port", "{port}"],
        "admin",
        None,
        "cannot listen on 999.1.1.1:{port}: ",
    ),
    (
        "not migrated",
        ["serve", "--port", "0"],
        "empty",
        None,
        "the database {where} has no opspush schema: run `opspush migrate`",
    ),
    (
        "not migrated, workers",
        ["serve", "--port", "0", "--workers", "2"],
        "empty",
        None,
        "the database {where} has no opspush schema: run `opspush migrate`",
    ),
    (
        "migrated by an older opspush",
        ["serve", "--port", "0"],
        "old",
        None,
        "the database {where} has an opspush schema older than this opspush "
        "(without {old missing}): run `opspush migrate`",
    ),
    (
        "not attached",
        ["serve", "--port", "0"],
        "empty",
        MAPPING,
        f'the database {{where}} has no opspush views in schema "opspush": {ATTACH}',
    ),
    (
        "attached by an older opspush",
        ["serve", "--port", "0"],
        "views",
        MAPPING,
        'the database {where} has opspush views in schema "opspush" older than this opspush '
        f"(without operation_runs.updated_at): {ATTACH}",
    ),
]


@pytest.mark.parametrize(
    ("args", "database", "config", "message"),
    [pytest.param(*row[1:], id=row[0]) for row in BAD_INPUT],
)
def test_bad_input_is_one_line_and_exit_2(
    schemaless: dict[str, str],
    tmp_path: Path,
    args: list[str],
    database: str,
    config: str | None,
    message: str,
) -> None:
    dsn = schemaless[database]
    env = {"OPSPUSH_SECRET": SECRET, "DATABASE_URL": dsn, "HOME": str(tmp_path)}
    if config is not None:
        env["OPSPUSH_CONFIG"] = config
    with free_socket() as taken:
        taken.listen()
        port = str(taken.getsockname()[1])
        result = opspush(*(arg.format(port=port) for arg in args), env=env)
    names = {"port": port, "where": where(dsn), "old missing": schemaless["old missing"]}
    expected = "opspush: " + message.format(**names)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(expected), result.stderr
    assert result.stderr.count("\n") == 1 and result.stdout == "", result.stdout + result.stderr


NOT_TOML = str(Path(__file__).parent.parent / "README.md")
NO_DATABASE = {"DATABASE_URL": "postgresql://postgres@127.0.0.1:1/postgres"}  # port 1: refused

BAD_COMMANDS = [
    # The mapping file is read before DATABASE_URL is looked at.
    (["attach", "--config", "/no/such/opspush.toml"], {}, "cannot read: No such file"),
    (["attach", "--config", NOT_TOML, "--check"], {}, "README.md: TOML syntax error"),
    (["detach", "--config", "/no/such/opspush.toml"], {}, "cannot read: No such file"),
    (["attach", "--config", MAPPING, "--check"], NO_DATABASE, "127.0.0.1:1: connection refused"),
    (["detach", "--config", MAPPING], NO_DATABASE, "127.0.0.1:1: connection refused"),
    (["token", "--user", "99999999999999999999999"], {}, "--user must be a user id from 1 to 9"),
    (["token", "--user", "0"], {}, "--user must be a user id from 1 to 9223372036854775807, not 0"),
    (["token", "--user", "7", "--ttl", "0"], {}, "--ttl must be at least 1 second, not 0"),
]


@pytest.mark.parametrize(("args", "env", "message"), BAD_COMMANDS)
def test_bad_commands_are_one_line_and_exit_2(
    args: list[str], env: dict[str, str], message: str
) -> None:
    result = opspush(*args, env={"OPSPUSH_SECRET": SECRET, **env})
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
    assert result.stderr.startswith("opspush: ") and not result.stdout


@pytest.mark.parametrize(
    ("args", "env", "lifetime"),
    [
        (["--channel", "run:42"], {}, 900),  # a channels token lives at most 900 s
        (["--channel", "run:42"], {"OPSPUSH_MAX_CHANNEL_TOKEN_TTL": "120"}, 120),
        ([], {"OPSPUSH_MAX_TOKEN_TTL": "600"}, 600),
    ],
)
def test_token_lives_as_long_as_it_may_by_default(
    args: list[str], env: dict[str, str], lifetime: int
) -> None:
    result = opspush("token", "--user", "7", *args, env={"OPSPUSH_SECRET": SECRET, **env})
    assert result.returncode == 0, result.stderr
    claims = jwt.decode(result.stdout.strip(), SECRET, algorithms=["HS256"])
    assert claims["exp"] - claims["iat"] == lifetime and claims["sub"] == "7"


def test_token_refuses_a_ttl_past_the_cap() -> None:
    env = {"OPSPUSH_SECRET": SECRET, "OPSPUSH_MAX_TOKEN_TTL": "3600"}
    result = opspush("token", "--user", "7", "--ttl", "3601", env=env)
    assert result.returncode == 2 and "OPSPUSH_MAX_TOKEN_TTL" in result.stderr, result.stderr


def test_edge_settings_defaults_and_parsing() -> None:
    defaults = Settings.from_env({"OPSPUSH_SECRET": SECRET})
    assert defaults.max_connections_per_user == 20
    assert defaults.max_connections_per_address == 500
    assert defaults.trusted_proxies == () and defaults.metrics_token is None
    assert defaults.max_token_ttl == 86_400 and defaults.frame_ancestors == "'none'"
    settings = Settings.from_env(
        {
            "OPSPUSH_SECRET": SECRET,
            "OPSPUSH_TRUST_PROXY": "127.0.0.1, 10.0.0.0/8 fd00::/8",
            "OPSPUSH_FRAME_ANCESTORS": "https://console.example, https://*.example.org:8443",
            "OPSPUSH_METRICS_TOKEN": "m" * 16,
            "OPSPUSH_MAX_CONNECTIONS_PER_USER": "0",
            "OPSPUSH_MAX_CONNECTIONS_PER_ADDRESS": "0",
        }
    )
    assert [str(n) for n in settings.trusted_proxies] == ["127.0.0.1/32", "10.0.0.0/8", "fd00::/8"]
    assert settings.frame_ancestors == "https://console.example https://*.example.org:8443"
    assert settings.metrics_token == "m" * 16
    assert settings.max_connections_per_user == settings.max_connections_per_address == 0
    for off in ("0", "off", ""):
        assert Settings.from_env({"OPSPUSH_SECRET": SECRET, "OPSPUSH_TRUST_PROXY": off})
    for bad in ("'none' https://a.example", "javascript:", "*", "https://a.example/path"):
        with pytest.raises(ConfigError):
            Settings.from_env({"OPSPUSH_SECRET": SECRET, "OPSPUSH_FRAME_ANCESTORS": bad})


@pytest.fixture(scope="module")
def password_database() -> Iterator[str]:
    """A PostgreSQL of its own that checks passwords (the suite's trusts every local user):
    the socket folder; user `opspush_pw` has the password `right-password`."""
    from opspush.database import embedded

    folder = tempfile.mkdtemp(prefix="opspush-test-pw-")
    server = embedded.start(os.path.join(folder, "data"), delete_on_stop=True)
    try:
        server.server.psql("CREATE ROLE opspush_pw LOGIN PASSWORD 'right-password';")
        hba = Path(server.server.pgdata) / "pg_hba.conf"
        hba.write_text("local all opspush_pw scram-sha-256\n" + hba.read_text())
        server.server.psql("SELECT pg_reload_conf();")
        yield parse_qs(urlsplit(server.dsn).query)["host"][0]
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


BAD_DATABASES = [
    (
        "bad URL",
        lambda s, p: "postgresql://u@[bad/db",
        "DATABASE_URL is not a valid URL (Invalid IPv6 URL)",
    ),
    (
        "refused",
        lambda s, p: f"postgresql://postgres@127.0.0.1:{p}/postgres",
        "cannot connect to the database at 127.0.0.1:{p}: connection refused",
    ),
    (
        "unknown host",
        lambda s, p: "postgresql://postgres@no-such-host.invalid/postgres",
        "unknown database host 'no-such-host.invalid'",
    ),
    (
        "wrong password",
        lambda s, p: f"postgresql://opspush_pw:wrong-password@/postgres?host={s}",
        "the database at {s}:5432 refused the password of user 'opspush_pw'",
    ),
    (
        "missing database",
        lambda s, p: f"postgresql://postgres@/no_such_db?host={s}",
        "the database server at {s}:5432 has no database 'no_such_db'",
    ),
]


@pytest.mark.parametrize("command", ["serve", "migrate", "demo", "simulate"])
@pytest.mark.parametrize(("url", "message"), [pytest.param(*c[1:], id=c[0]) for c in BAD_DATABASES])
def test_bad_database_is_one_line_and_exit_2(
    password_database: str, command: str, url: Any, message: str
) -> None:
    with free_socket() as closed:  # bound, never listening: connections are refused
        port = closed.getsockname()[1]
        dsn = url(password_database, port)
        result = opspush(command, env={"OPSPUSH_SECRET": SECRET, "DATABASE_URL": dsn})
    expected = "opspush: " + message.format(s=password_database, p=port)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(expected) and result.stderr.count("\n") == 1, result.stderr
    assert "wrong-password" not in result.stdout + result.stderr


def test_demo_secret_is_made_once_and_kept_beside_its_data(tmp_path: Path) -> None:
    data = str(tmp_path / "demo")
    first = demo_secret(data)
    assert len(first) >= 32 and demo_secret(data) == first  # a restart keeps the links working
    kept = tmp_path / "demo-secret"
    assert kept.read_text().strip() == first and kept.stat().st_mode & 0o777 == 0o600


def test_help_texts_name_the_environment() -> None:
    for command, names in [
        ("serve", ["DATABASE_URL", "OPSPUSH_SECRET", "OPSPUSH_DATA_DIR"]),
        ("demo", ["DATABASE_URL", "OPSPUSH_SECRET", "rm -rf"]),
        ("migrate", ["DATABASE_URL"]),
        ("simulate", ["DATABASE_URL"]),
        ("token", ["OPSPUSH_SECRET"]),
    ]:
        result = opspush(command, "--help")
        assert result.returncode == 0 and all(name in result.stdout for name in names), command


def test_version() -> None:
    result = opspush("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"opspush {opspush_version}"


def test_token_mints_a_verifiable_token() -> None:
    result = opspush("token", "--user", "7", "--ttl", "60", env={"OPSPUSH_SECRET": SECRET})
    assert result.returncode == 0, result.stderr
    identity = verify_token(result.stdout.strip(), SECRET)
    assert identity.user_id == 7


def test_migrate_needs_a_database_url() -> None:
    result = opspush("migrate")
    assert result.returncode == 2 and "DATABASE_URL" in result.stderr


def test_settings_parse_origins_and_limits() -> None:
    settings = Settings.from_env(
        {
            "OPSPUSH_SECRET": SECRET,
            "OPSPUSH_ALLOWED_ORIGINS": "https://Console.example, http://localhost:8000/, "
            "https://wall.example:443, http://[::1]:8080",
            "OPSPUSH_MAX_SUBSCRIPTIONS": "5",
            "OPSPUSH_MAX_CONNECTIONS_PER_USER": "0",
        }
    )
    assert settings.allowed_origins == {
        "https://console.example",
        "http://localhost:8000",
        "https://wall.example",  # as a browser sends it: no default port
        "http://[::1]:8080",
    }
    assert settings.max_subscriptions == 5 and settings.max_connections_per_user == 0
    with pytest.raises(ConfigError):
        Settings.from_env({"OPSPUSH_SECRET": SECRET, "OPSPUSH_RECHECK_INTERVAL": "60"})


async def test_migrate_is_idempotent_and_records_versions(database_dsn: str) -> None:
    assert await migrate(database_dsn) == []  # the fixture applied everything already
    connection = await asyncpg.connect(database_dsn)
    try:
        versions = [r["version"] for r in await connection.fetch(
            "SELECT version FROM schema_migrations ORDER BY version"
        )]  # fmt: skip
        defaults = await connection.fetchval(
            "SELECT count(*) FROM role_capabilities WHERE role IN ('operator', 'readonly')"
        )
    finally:
        await connection.close()
    assert versions == [m.version for m in discover()]
    assert defaults >= 5


def test_sql_and_static_dirs_default_to_the_package_and_honour_the_overrides(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from opspush.resources import sql_dir, static_dir

    monkeypatch.delenv("OPSPUSH_SQL_DIR", raising=False)
    monkeypatch.delenv("OPSPUSH_STATIC_DIR", raising=False)
    assert (sql_dir() / "001_schema.sql").is_file()
    assert (static_dir() / "opspush.js").is_file()
    monkeypatch.setenv("OPSPUSH_SQL_DIR", str(tmp_path / "sql"))
    monkeypatch.setenv("OPSPUSH_STATIC_DIR", str(tmp_path / "static"))
    assert (sql_dir(), static_dir()) == (tmp_path / "sql", tmp_path / "static")


# -- the demo ------------------------------------------------------------------------------

OUTCOME_CASES = [
    # total, processed, succeeded, failed -> outcome
    ((300, 300, 300, 0), "succeeded"),
    ((300, 300, 298, 2), "partially_succeeded"),
    ((300, 300, 0, 300), "failed"),
    ((300, 120, 120, 0), "cancelled"),
    ((300, 120, 117, 3), "cancelled"),
    ((300, 0, 0, 0), "blocked"),
    ((20, 20, 20, 0), "succeeded"),
    ((20, 20, 1, 19), "partially_succeeded"),
]


@pytest.mark.parametrize(("counts", "outcome"), OUTCOME_CASES)
def test_the_demo_outcome_follows_from_the_counters(
    counts: tuple[int, int, int, int], outcome: str
) -> None:
    total, processed, succeeded, failed = counts
    summary = {"total": total, "processed": processed, "succeeded": succeeded, "failed": failed}
    assert outcome_from_counts(summary) == outcome
    reasons = failure_reasons(outcome, summary)
    assert sum(r.get("count", 0) for r in reasons if r["code"] == "tenant.throttled") == failed
    assert bool(reasons) == (failed > 0 or outcome == "blocked")


@pytest.fixture
async def demo_database(postgres_server: dict[str, Any]) -> AsyncIterator[str]:
    """A database of its own: the demo's seed is not for the suite's shared one."""
    name = f"opspush_demo_test_{uuid.uuid4().hex[:10]}"
    dsn = await create_database(postgres_server["dsn"], name)
    try:
        yield dsn
    finally:
        admin = await asyncpg.connect(postgres_server["dsn"])
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


async def test_the_demo_simulator_finishes_runs_as_their_counters_say(demo_database: str) -> None:
    pool = await create_pool(demo_database, 2)
    try:
        async with pool.acquire() as connection:
            ids = await seed(connection)
        simulator = Simulator(pool, ids, seed_value=7)
        linked = await simulator.start_showcase_run()
        for _ in range(180):  # three minutes of the demo, a step a second
            await simulator.step()
        finished = await pool.fetch(
            """SELECT outcome, summary_counts, failure_summary FROM operation_runs
               WHERE status = 'completed'"""
        )
        assert len(finished) > 20
        for run in finished:
            counts, failures = run["summary_counts"], run["failure_summary"]  # the pool decodes
            assert run["outcome"] == outcome_from_counts(counts), counts
            assert failures == failure_reasons(run["outcome"], counts), (counts, failures)
        assert {"succeeded", "partially_succeeded"} <= {run["outcome"] for run in finished}
        # The linked run is still in flight three minutes on, and a restart links a new one.
        assert await pool.fetchval("SELECT status FROM operation_runs WHERE id = $1", linked) == (
            "running"
        )
        relinked = await Simulator(pool, ids).start_showcase_run()
        assert relinked != linked
        assert await pool.fetchval("SELECT status FROM operation_runs WHERE id = $1", relinked) == (
            "running"
        )
    finally:
        await pool.close()


async def demo_start(env: dict[str, str]) -> dict[str, str]:
    """Start `opspush demo`, read what it prints up to its last line, and stop it."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OPSPUSH_")}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "opspush.commands.cli", "demo", "--port", "0",
        env={**clean, **env}, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    assert process.stdout is not None
    printed = ""
    try:
        async with asyncio.timeout(60):
            while "kept beside the data" not in printed:
                line = (await process.stdout.readline()).decode()
                assert line, f"the demo exited: {printed}"
                printed += line
    finally:
        process.terminate()
        await process.wait()
    run = re.search(r"a run in flight: +\S+/runs/(\d+)#", printed)
    pusher = re.search(r"OPSPUSH_PUSHER_SECRET=(\S+)", printed)
    assert run and pusher, printed
    return {"run": run.group(1), "pusher_secret": pusher.group(1)}


async def test_the_demo_links_a_run_in_flight_and_keeps_its_secrets_across_a_restart(
    demo_database: str, tmp_path: Path
) -> None:
    env = {"DATABASE_URL": demo_database, "XDG_DATA_HOME": str(tmp_path)}
    first = await demo_start(env)
    again = await demo_start(env)
    assert again["pusher_secret"] == first["pusher_secret"]  # the host's .env stays right
    assert again["run"] != first["run"]  # not what the first start left behind
    connection = await asyncpg.connect(demo_database)
    try:
        status = await connection.fetchval(
            "SELECT status FROM operation_runs WHERE id = $1", int(again["run"])
        )
    finally:
        await connection.close()
    assert status == "running"
    # The help's reset command removes all the demo keeps, in either mode.
    help_text = opspush("demo", "--help").stdout
    reset = re.search(r"rm -rf (.+)", help_text)
    assert reset, help_text
    patterns = [p.replace("~/.local/share", str(tmp_path)) for p in reset.group(1).split()]
    kept = [*(tmp_path / "opspush").iterdir(), tmp_path / "opspush" / "demo-attach"]
    kept.append(tmp_path / "opspush" / "demo-attach-secret")
    assert {p.name for p in kept} >= {"demo-secret", "demo-pusher-secret"}
    for path in kept:
        assert any(fnmatch.fnmatch(str(path), pattern) for pattern in patterns), (path, patterns)


# -- noise ---------------------------------------------------------------------------------

LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR) \S+: ")


async def test_serve_logs_in_one_format_and_nothing_per_connection(database_dsn: str) -> None:
    with free_socket() as probe:
        port = probe.getsockname()[1]
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OPSPUSH_")}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "opspush.commands.cli", "serve", "--port", str(port),
        env={**clean, "DATABASE_URL": database_dsn, "OPSPUSH_SECRET": SECRET},
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stderr is not None
    lines: list[str] = []
    try:
        async with asyncio.timeout(60):
            while not lines or "Uvicorn running on" not in lines[-1]:
                line = (await process.stderr.readline()).decode()
                assert line, f"serve exited: {lines}"
                lines.append(line)
            for _ in range(3):  # viewers come and go
                async with websockets.connect(f"ws://127.0.0.1:{port}/ws"):
                    pass
    finally:
        process.terminate()
        rest = (await process.stderr.read()).decode()
        await process.wait()
    lines += rest.splitlines(keepends=True)
    assert all(LOG_LINE.match(line) for line in lines), lines
    assert not [line for line in lines if "connection open" in line or "connection closed" in line]


def test_a_restarted_embedded_postgres_prints_nothing(tmp_path: Path) -> None:
    start = "import sys; from opspush.database import embedded; embedded.start(sys.argv[1]).stop()"
    for _ in range(2):  # made, then started again on its data (the demo's second start)
        result = subprocess.run(
            [sys.executable, "-c", start, str(tmp_path / "pgdata")],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        assert result.stderr == "", result.stderr


@pytest.mark.parametrize(
    ("seconds", "created", "finished", "in_flight", "line"),
    [
        (60, 0, {}, 0, "last 60 s: runs created 0, finished 0; in flight 0"),
        (
            60,
            31,
            {"succeeded": 20, "partially_succeeded": 5, "cancelled": 1},
            6,
            "last 60 s: runs created 31, finished 26 "
            "(1 cancelled, 5 partially succeeded, 20 succeeded); in flight 6",
        ),
        (
            0.5,
            1,
            {"blocked": 1},
            0,
            "last 0.5 s: runs created 1, finished 1 (1 blocked); in flight 0",
        ),
    ],
)
def test_the_simulator_s_progress_line(
    seconds: float, created: int, finished: dict[str, int], in_flight: int, line: str
) -> None:
    assert progress_line(seconds, created, finished, in_flight) == line


async def test_the_simulator_reports_every_so_often(demo_database: str) -> None:
    pool = await create_pool(demo_database, 2)
    try:
        async with pool.acquire() as connection:
            ids = await seed(connection)
        reports: asyncio.Queue[str] = asyncio.Queue()
        simulator = Simulator(pool, ids, seed_value=3)
        running = asyncio.create_task(
            simulator.run(period=0.001, report_every=50, report=reports.put_nowait)
        )
        try:
            async with asyncio.timeout(30):
                lines = [await reports.get(), await reports.get()]
        finally:
            running.cancel()
        assert all(line.startswith("last 0.05 s: runs created ") for line in lines), lines
        assert await pool.fetchval("SELECT count(*) FROM operation_runs") > 0
    finally:
        await pool.close()


async def test_simulate_says_what_it_does(demo_database: str) -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OPSPUSH_")}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "opspush.commands.cli", "simulate",
        env={**clean, "DATABASE_URL": demo_database}, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stderr is not None
    try:
        async with asyncio.timeout(30):
            first = (await process.stderr.readline()).decode()
    finally:
        process.terminate()
        await process.wait()
    assert LOG_LINE.match(first), first
    assert "simulating the console of workspace" in first and "Ctrl-C to stop" in first, first
