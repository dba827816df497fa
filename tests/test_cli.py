"""The command line: configuration errors are one clear line; tokens; migrations."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import asyncpg
import jwt
import pytest

from opspush import __version__ as opspush_version
from opspush.commands.cli import demo_secret
from opspush.config import ConfigError, Settings
from opspush.core.auth import verify_token
from opspush.database.migrations import discover, migrate
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


NOT_TOML = str(Path(__file__).parent.parent / "README.md")
MAPPING = str(Path(__file__).parent.parent / "examples" / "laravel" / "opspush.toml")
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
def test_bad_input_is_one_line_and_exit_2(
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
