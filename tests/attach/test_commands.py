"""`opspush attach [--check | --triggers]`, `detach` and `migrate` in attach mode, as an
operator runs them (subprocesses), and the least privilege of the serving role."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from opspush.attach import attach
from opspush.attach.host_demo import MAPPING, create_host
from opspush.database.mapping import DOMAIN, load, quote
from tests.attach.conftest import Host, dump_schema, pg_dump


def opspush(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "opspush.commands.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def mapping_with(
    tmp_path: Path, schema: str, extra: str = "", replace: tuple[str, str] = ("", "")
) -> Path:
    text = MAPPING.read_text().replace('schema = "opspush"', f'schema = "{schema}"')
    if replace[0]:
        assert replace[0] in text
        text = text.replace(*replace)
    path = tmp_path / "mapping.toml"
    path.write_text(text + extra)
    return path


async def schema_exists(host: Host, schema: str) -> bool:
    value: bool = await host.pool.fetchval("SELECT to_regnamespace($1) IS NOT NULL", schema)
    return value


async def test_check_on_the_fixture_is_usable_with_one_index_warning(
    host: Host, cli_env: dict[str, str], tmp_path: Path
) -> None:
    path = mapping_with(tmp_path, "opspush_checked")
    result = await asyncio.to_thread(
        opspush, "attach", "--config", str(path), "--check", env=cli_env
    )
    print(result.stdout, result.stderr)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines == [
        "warning: tenant_entitlements.user_id: no index for access facts by user; the host may "
        'run: CREATE INDEX CONCURRENTLY "tenant_user_opspush_user_id_idx" '
        'ON "public"."tenant_user" ("user_id");',
        f"{path}: usable (9 tables resolved)",
    ]
    assert not await schema_exists(host, "opspush_checked")  # --check wrote nothing


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (('from = "tenant_user"', 'from = "tenant_user"\nwhere = "revoked_at IS NULL"'),
         "error: tenant_entitlements: where 'revoked_at IS NULL': "
         'column "revoked_at" does not exist'),
        (('from = "workspace_user"', 'from = "workspace_members"'),
         "error: workspace_memberships: host table 'workspace_members' does not exist"),
        (('name = "display_name"', 'name = "title"'),
         'error: tenants.name: \'title\' on tenants: column "title" does not exist'),
        (('initiated_by_user_id = "user_id"', 'initiated_by_user_id = "created_at"'),
         "error: operation_runs.initiated_by_user_id: 'created_at' on operation_runs is timestamp; "
         "a bigint column needs one of int2, int4, int8"),
        (('from = "tenant_user"', 'from = "tenant_user"\nsql = "SELECT 1"'),
         "sets both `from` and `sql`"),
        (('[tables.users]', '[tables.users'), "TOML syntax error"),
    ],
)  # fmt: skip
async def test_a_bad_mapping_is_one_line_exit_2_and_nothing_written(
    host: Host,
    cli_env: dict[str, str],
    tmp_path: Path,
    change: tuple[str, str],
    expected: str,
) -> None:
    schema = f"opspush_bad_{uuid.uuid4().hex[:6]}"
    path = mapping_with(tmp_path, schema, replace=change)
    for mode in (["--check"], [], ["--triggers"]):
        result = await asyncio.to_thread(
            opspush, "attach", "--config", str(path), *mode, env=cli_env
        )
        assert result.returncode == 2, (mode, result.stdout, result.stderr)
        problems = [
            line for line in result.stderr.splitlines() if line.startswith(("error:", "opspush:"))
        ]
        assert expected in problems[0], problems
        assert len([p for p in problems if p.startswith("error:")]) <= 1, problems
        assert not await schema_exists(host, schema)


async def test_the_summary_counts_problems_in_words(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    path = mapping_with(
        tmp_path, "opspush_one_problem", replace=('from = "workspace_user"', 'from = "nowhere"')
    )
    result = await asyncio.to_thread(
        opspush, "attach", "--config", str(path), "--check", env=cli_env
    )
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "error: workspace_memberships: host table 'nowhere' does not exist",
        f"opspush: {path}: not usable (1 problem); nothing was written",
    ]


async def test_migrate_refuses_in_attach_mode(cli_env: dict[str, str]) -> None:
    env = {**cli_env, "OPSPUSH_CONFIG": str(MAPPING)}
    result = await asyncio.to_thread(opspush, "migrate", env=env)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "opspush: migrate refused: OPSPUSH_CONFIG is set (attach mode), and the host's schema is "
        "not opspush's to migrate; run `opspush attach --config FILE` instead"
    ]


async def test_serve_refuses_a_bad_mapping_with_one_line(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[tables.runs]\nfrom = 'x'\n")
    env = {**cli_env, "OPSPUSH_CONFIG": str(bad), "OPSPUSH_SECRET": "s" * 40}
    result = await asyncio.to_thread(opspush, "serve", "--port", "0", env=env)
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1
    assert "[tables.runs] is no domain table" in result.stderr


async def test_host_schema_identical_before_attach_and_after_detach(
    postgres_server: dict[str, Any], tmp_path: Path
) -> None:
    """pg_dump --schema-only of the host's schema: attach --triggers adds only the triggers."""
    name = f"opspush_host_{uuid.uuid4().hex[:10]}"
    dsn = await create_host(postgres_server["dsn"], name)
    try:
        env = {"DATABASE_URL": dsn, "PATH": "/usr/bin:/bin"}
        before = await asyncio.to_thread(dump_schema, dsn)
        first = await asyncio.to_thread(
            opspush, "attach", "--config", str(MAPPING), "--triggers", env=env
        )
        assert first.returncode == 0, first.stderr
        assert "created view opspush.operation_runs" in first.stdout.splitlines()
        again = await asyncio.to_thread(
            opspush, "attach", "--config", str(MAPPING), "--triggers", env=env
        )
        assert again.stdout.splitlines() == [
            line for line in first.stdout.splitlines() if line.startswith("warning")
        ]
        during = await asyncio.to_thread(dump_schema, dsn)
        detached = await asyncio.to_thread(opspush, "detach", "--config", str(MAPPING), env=env)
        assert detached.returncode == 0, detached.stderr
        assert detached.stdout.splitlines()[-1] == "dropped schema opspush"
        after = await asyncio.to_thread(dump_schema, dsn)
        assert after == before
        # pg_dump writes one entry per object, each under a "-- Name: ..." header.
        entries_before, entries_during = entries(before), entries(during)
        added = [entry for entry in entries_during if entry not in entries_before]
        assert all(entry in entries_during for entry in entries_before)
        version = await asyncio.to_thread(
            subprocess.run, [pg_dump(), "--version"], capture_output=True, text=True
        )
        print(
            f"{version.stdout.strip()}: {len(before.splitlines())} lines before attach, "
            f"{len(after.splitlines())} after detach, identical: {before == after}; "
            f"{len(added)} entries added in between:"
        )
        print("\n\n".join(added))
        assert len(added) == 7, added
        assert all(
            "Type: TRIGGER" in entry.splitlines()[0] and "CREATE TRIGGER opspush_notify" in entry
            for entry in added
        ), added
    finally:
        admin = await asyncpg.connect(postgres_server["dsn"])
        try:
            await admin.execute(f"DROP DATABASE IF EXISTS {quote(name)} WITH (FORCE)")
        finally:
            await admin.close()


def entries(dump: str) -> list[str]:
    return [entry.strip() for entry in dump.split("\n--\n-- Name: ")]


async def test_concurrent_attach_runs_are_serialized_and_idempotent(host: Host) -> None:
    mapping = load(MAPPING)
    schema = f"opspush_race_{uuid.uuid4().hex[:6]}"
    mapping = type(mapping)(schema, mapping.timezone, mapping.tables, mapping.path)
    said: list[list[str]] = [[], [], []]

    async def one(lines: list[str]) -> None:
        async with host.pool.acquire() as db:
            await attach.attach(db, mapping, triggers=False, say=lines.append)

    await asyncio.gather(*(one(lines) for lines in said))
    created = [lines for lines in said if lines]
    # schema, function, display tables, views
    assert len(created) == 1 and len(created[0]) == 3 + len(DOMAIN), said
    async with host.pool.acquire() as db:
        lines: list[str] = []
        assert await attach.detach(db, mapping, say=lines.append)
    assert lines[-1] == f"dropped schema {schema}"


async def test_detach_never_drops_a_schema_it_did_not_make(host: Host, tmp_path: Path) -> None:
    await host.pool.execute("CREATE SCHEMA IF NOT EXISTS billing")
    mapping = load(mapping_with(tmp_path, "billing"))
    async with host.pool.acquire() as db:
        with pytest.raises(attach.Refused, match="not made by opspush"):
            await attach.detach(db, mapping, say=print)
        with pytest.raises(attach.Refused, match="not made by opspush"):
            await attach.attach(db, mapping, triggers=False, say=print)
    assert await schema_exists(host, "billing")


async def test_the_serving_role_reads_the_views_and_nothing_else_and_writes_nothing(
    host: Host,
) -> None:
    """USAGE on opspush's schema and SELECT on its views (the README's GRANT lines), only."""
    db = await asyncpg.connect(host.serving_dsn)
    try:
        schema = host.mapping.schema
        for name in DOMAIN:
            await db.fetch(f"SELECT * FROM {schema}.{name} LIMIT 1")
        host_tables = [
            r["relname"]
            for r in await db.fetch(
                """SELECT relname FROM pg_class
                   WHERE relnamespace = 'public'::regnamespace AND relkind = 'r'"""
            )
        ]
        assert "operation_runs" in host_tables and "role_has_permissions" in host_tables
        denied: list[str] = [
            *(f"SELECT * FROM public.{table} LIMIT 1" for table in host_tables),
            *(f"DELETE FROM public.{table}" for table in host_tables),
            f"SELECT * FROM {schema}.attach_ledger",
            f"INSERT INTO {schema}.workspaces (id) VALUES (999999)",
            f"UPDATE {schema}.operation_runs SET workspace_id = 1",
            f"DELETE FROM {schema}.users",
            f"CREATE TABLE {schema}.mine (x int)",
            "CREATE TABLE public.mine (x int)",
            f"CREATE VIEW {schema}.mine AS SELECT 1",
            f"DROP VIEW {schema}.operation_runs",
            f"ALTER VIEW {schema}.users RENAME TO people",
            "UPDATE public.users SET name = 'x'",
            f"CREATE OR REPLACE FUNCTION {schema}.json_or(value text, empty jsonb, place text, "
            "row_id bigint) RETURNS jsonb LANGUAGE sql AS 'SELECT empty'",
        ]
        for statement in denied:
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await db.execute(statement)
    finally:
        await db.close()


def test_opspush_config_puts_serve_in_attach_mode() -> None:
    from opspush.config import Settings

    env = {"OPSPUSH_SECRET": "s" * 40, "OPSPUSH_CONFIG": str(MAPPING)}
    settings = Settings.from_env(env)
    assert (settings.attached, settings.attach_schema) == (True, "opspush")
    assert not Settings.from_env({"OPSPUSH_SECRET": "s" * 40}).attached
