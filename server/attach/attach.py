"""Attach mode (docs/attach.md): opspush's own schema of views over the host's tables.

`resolve` checks a mapping against the live catalogue (and writes nothing); `attach` creates or
updates the schema, its views and functions, and optionally the notification triggers on host
tables; `detach` removes exactly what `attach` made. The SQL is generated here from the
mapping; what was applied is recorded in a ledger table in opspush's schema, so a re-run
changes only what differs and says so, one line per object.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

import asyncpg

from ..database import notifications
from ..database.mapping import ACCESS_TABLES, DOMAIN, Kind, Mapping, Table, is_identifier, quote

_LOCK_KEY = 0x6F7073617474_6163  # serializes concurrent attach/detach runs
LEDGER = "attach_ledger"
TRIGGER = "opspush_notify"  # the name of our trigger on each host table

# Host types each kind of domain column accepts (by pg_type name).
_ACCEPTS: dict[Kind, frozenset[str]] = {
    Kind.ID: frozenset({"int2", "int4", "int8"}),
    Kind.TEXT: frozenset({"text", "varchar", "bpchar", "name", "uuid", "citext"}),
    Kind.OBJECT: frozenset({"json", "jsonb", "text", "varchar"}),
    Kind.LIST: frozenset({"json", "jsonb", "text", "varchar"}),
    Kind.TIME: frozenset({"timestamptz", "timestamp"}),
}


@dataclass(frozen=True)
class Index:
    """An index a hot read needs: on `table`'s host `columns[0]` first."""

    purpose: str
    table: str
    columns: tuple[str, ...]  # domain columns; the first must lead the index
    suffix: str = ""  # ordering and predicate, in domain column names


HOT_INDEXES = (
    Index("runs by id", "operation_runs", ("id",)),
    Index(
        "the wall's active runs",
        "operation_runs",
        ("workspace_id", "created_at"),
        "WHERE {status} IN ('queued', 'running')",
    ),
    Index("the latest pack per tenant", "review_packs", ("tenant_id", "created_at", "id")),
    Index("access facts by user", "workspace_memberships", ("user_id",)),
    Index("access facts by user", "tenant_entitlements", ("user_id",)),
)


@dataclass
class Resolved:
    """One domain table checked against the catalogue."""

    table: Table
    relation: str | None = None  # the quoted, schema-qualified host table (`from` only)
    oid: int | None = None
    relname: str = ""
    types: dict[str, str] = field(default_factory=dict)  # domain column -> host type name


@dataclass
class Report:
    tables: dict[str, Resolved] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


Db = asyncpg.Connection


# -- resolving against the catalogue ------------------------------------------------------


async def resolve(db: Db, mapping: Mapping) -> Report:
    """Check every table, column, expression and type. Must run inside a transaction."""
    report = Report()
    if not await _tries(db, "SELECT now() AT TIME ZONE $1", mapping.timezone):
        report.problems.append(f"[attach] timezone: {mapping.timezone!r} is no time zone")
    for name, table in mapping.tables.items():
        resolved = Resolved(table)
        report.tables[name] = resolved
        if table.sql is not None:
            await _resolve_query(db, resolved, report.problems)
        else:
            await _resolve_table(db, mapping, resolved, report.problems)
    if not report.problems:
        report.warnings.extend(await _missing_indexes(db, report))
    return report


async def _resolve_table(db: Db, mapping: Mapping, resolved: Resolved, problems: list[str]) -> None:
    table = resolved.table
    assert table.source is not None
    row = await db.fetchrow(
        """SELECT c.oid, n.nspname, c.relname, c.relkind::text AS relkind,
                  has_table_privilege(c.oid, 'SELECT') AS readable
           FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE c.oid = to_regclass($1)""",
        table.source,
    )
    if row is None or row["relkind"] not in ("r", "p", "v", "m", "f"):
        problems.append(f"{table.name}: host table {table.source!r} does not exist")
        return
    if row["nspname"] == mapping.schema:
        problems.append(
            f"{table.name}: {table.source!r} is in opspush's own schema; name the host table"
        )
        return
    if not row["readable"]:
        problems.append(f"{table.name}: this role may not SELECT from {table.source!r}")
        return
    resolved.oid = row["oid"]
    resolved.relname = row["relname"]
    resolved.relation = f"{quote(row['nspname'])}.{quote(row['relname'])}"
    if table.where is not None:
        error = await _prepare_error(
            db, f"SELECT 1 FROM {resolved.relation} AS h WHERE ({table.where})"
        )
        if error:
            problems.append(f"{table.name}: where {table.where!r}: {error}")
    for column, kind in DOMAIN[table.name].items():
        expression = table.expression(column)
        if _is_null(expression):
            resolved.types[column] = "null"
            continue
        sql = f"SELECT ({expression}) FROM {resolved.relation} AS h WHERE false"
        try:
            async with db.transaction():
                statement = await db.prepare(sql)
        except asyncpg.PostgresError as error:
            problems.append(
                f"{table.name}.{column}: {expression!r} on {table.source}: {_one_line(error)}"
            )
            continue
        attributes = statement.get_attributes()
        if len(attributes) != 1:
            problems.append(f"{table.name}.{column}: {expression!r} must be one expression")
            continue
        type_name = attributes[0].type.name
        resolved.types[column] = type_name
        if type_name not in _ACCEPTS[kind]:
            problems.append(
                f"{table.name}.{column}: {expression!r} on {table.source} is {type_name}; "
                f"a {kind.value} column needs one of {', '.join(sorted(_ACCEPTS[kind]))}"
            )


async def _resolve_query(db: Db, resolved: Resolved, problems: list[str]) -> None:
    table = resolved.table
    assert table.sql is not None
    try:
        async with db.transaction():
            statement = await db.prepare(f"SELECT * FROM ({table.sql}) AS h WHERE false")
    except asyncpg.PostgresError as error:
        problems.append(f"{table.name}: sql: {_one_line(error)}")
        return
    returned = {attribute.name: attribute.type.name for attribute in statement.get_attributes()}
    for column, kind in DOMAIN[table.name].items():
        type_name = returned.get(column)
        if type_name is None:
            problems.append(f"{table.name}.{column}: the sql query returns no column {column!r}")
        elif type_name not in _ACCEPTS[kind]:
            problems.append(
                f"{table.name}.{column}: the sql query returns {type_name}; "
                f"a {kind.value} column needs one of {', '.join(sorted(_ACCEPTS[kind]))}"
            )
        else:
            resolved.types[column] = type_name


async def _missing_indexes(db: Db, report: Report) -> list[str]:
    warnings = []
    for index in HOT_INDEXES:
        resolved = report.tables[index.table]
        table = resolved.table
        if resolved.oid is None:
            continue  # a query: its indexes are the host's business
        host = [table.expression(c) for c in index.columns]
        if not all(_plain_column(e) for e in host):
            continue  # an expression: no index to suggest
        leading = _unquote(host[0])
        covered = await db.fetchval(
            """SELECT EXISTS (
                   SELECT 1 FROM pg_index i
                   JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
                   WHERE i.indrelid = $1 AND a.attname = $2)""",
            resolved.oid,
            leading,
        )
        if covered:
            continue
        order = [host[0]] + [f"{c} DESC" for c in host[1:]]
        suffix = index.suffix.format(status=table.expression("status")) if index.suffix else ""
        name = quote(f"{resolved.relname}_opspush_{leading}_idx")
        create = f"CREATE INDEX CONCURRENTLY {name} ON {resolved.relation} ({', '.join(order)})"
        warnings.append(
            f"{table.name}.{index.columns[0]}: no index for {index.purpose}; "
            f"the host may run: {create}{' ' + suffix if suffix else ''};"
        )
    return warnings


# -- the generated SQL --------------------------------------------------------------------


def _normalized(
    mapping: Mapping, resolved: Resolved, column: str, kind: Kind, source: str, id_sql: str
) -> str:
    """The view's expression for one domain column, of exactly the column's type."""
    type_name = resolved.types[column]
    if type_name == "null":
        return f"NULL::{kind.sql_type}"
    if kind is Kind.ID:
        return source if type_name == "int8" else f"({source})::bigint"
    if kind is Kind.TEXT:
        return f"({source})::text"
    if kind is Kind.TIME:
        if type_name == "timestamptz":
            return source
        return f"(({source}) AT TIME ZONE {_literal(mapping.timezone)})"
    empty = "'{}'" if kind is Kind.OBJECT else "'[]'"
    place = _literal(f"{resolved.table.name}.{column}")
    return f"{quote(mapping.schema)}.json_or(({source})::text, {empty}::jsonb, {place}, {id_sql})"


def view_sql(mapping: Mapping, resolved: Resolved) -> str:
    table = resolved.table
    columns = DOMAIN[table.name]
    if table.sql is not None:
        sources = {c: f"h.{quote(c)}" for c in columns}
        origin = f"({table.sql}) AS h"
        where = ""
    else:
        sources = {c: table.expression(c) for c in columns}
        origin = f"{resolved.relation} AS h"
        where = f"\nWHERE ({table.where})" if table.where else ""
    id_sql = "NULL::bigint"
    if "id" in columns and resolved.types.get("id") not in (None, "null"):
        id_sql = f"({sources['id']})::bigint"
    selected = ",\n       ".join(
        f"{_normalized(mapping, resolved, c, kind, sources[c], id_sql)} AS {quote(c)}"
        for c, kind in columns.items()
    )
    return (
        f"CREATE OR REPLACE VIEW {quote(mapping.schema)}.{quote(table.name)} AS\n"
        f"SELECT {selected}\nFROM {origin}{where}"
    )


def json_function_sql(schema: str, server_version: int) -> str:
    """Malformed JSON (or JSON of the wrong shape) reads as the empty value, with a NOTICE.

    The service logs the NOTICE once per row (see database/storage.py). PostgreSQL 16+ validates
    without an exception block, which would cost a subtransaction per value read.
    """
    if server_version >= 160000:
        parse = "parsed := CASE WHEN pg_input_is_valid(value, 'jsonb') THEN value::jsonb END;"
    else:
        parse = (
            "BEGIN\n        parsed := value::jsonb;\n"
            "    EXCEPTION WHEN others THEN\n        parsed := NULL;\n    END;"
        )
    return f"""CREATE OR REPLACE FUNCTION {quote(schema)}.json_or(
    value text, empty jsonb, place text, row_id bigint) RETURNS jsonb
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $fn$
DECLARE
    parsed jsonb;
BEGIN
    IF value IS NULL THEN
        RETURN empty;
    END IF;
    {parse}
    IF parsed IS NULL OR jsonb_typeof(parsed) <> jsonb_typeof(empty) THEN
        RAISE NOTICE 'opspush: malformed JSON in % of row %: read as %', place, row_id, empty
            USING DETAIL = 'opspush-malformed-json';
        RETURN empty;
    END IF;
    RETURN parsed;
END $fn$"""


# The payloads of sql/003_notify.sql, per domain table: (events, level, payload over the
# mapped row `h`, the domain columns it needs).
_CHANGES = "INSERT OR UPDATE OR DELETE"
_PAYLOADS: dict[str, tuple[str, str, str, tuple[str, ...]]] = {
    "operation_runs": (
        _CHANGES,
        "ROW",
        "'r:' || h.id || ':' || h.workspace_id",
        ("id", "workspace_id"),
    ),
    "review_packs": (_CHANGES, "ROW", "'p:' || h.tenant_id", ("tenant_id",)),
    # An update may soft-delete a tenant or a workspace (its `where`), so updates count.
    "tenants": ("UPDATE OR DELETE", "ROW", "'t:' || h.id", ("id",)),
    "workspaces": ("UPDATE OR DELETE", "ROW", "'w:' || h.id", ("id",)),
    **{name: (_CHANGES, "STATEMENT", "'a'", ()) for name in ACCESS_TABLES},
}


def trigger_sql(mapping: Mapping, resolved: Resolved) -> tuple[str, str] | None:
    """(function, trigger) for a host table given by `from`, or None."""
    table = resolved.table
    spec = _PAYLOADS.get(table.name)
    if spec is None or resolved.relation is None:
        return None
    timing, level, payload, needed = spec
    function = f"{quote(mapping.schema)}.{quote('notify_' + table.name)}"
    channel = _literal(notifications.CHANNEL)
    if level == "STATEMENT":
        body = f"    PERFORM pg_notify({channel}, {payload});"
    else:
        # The mapping's expressions are over the host row: apply them to OLD and NEW.
        parts = []
        for record, skip in (("OLD", "INSERT"), ("NEW", "DELETE")):
            selected = ", ".join(f"({table.expression(c)}) AS {c}" for c in needed)
            present = " AND ".join(f"h.{c} IS NOT NULL" for c in needed)
            parts.append(
                f"    IF TG_OP <> '{skip}' THEN\n"
                f"        PERFORM pg_notify({channel}, {payload})\n"
                f"        FROM (SELECT {selected} FROM (SELECT {record}.*) AS h) AS h\n"
                f"        WHERE {present};\n"
                f"    END IF;"
            )
        body = "\n".join(parts)
    function_sql = (
        f"CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $fn$\n"
        f"BEGIN\n{body}\n    RETURN NULL;\nEND $fn$"
    )
    trigger = (
        f"CREATE OR REPLACE TRIGGER {quote(TRIGGER)} AFTER {timing} ON {resolved.relation} "
        f"FOR EACH {level} EXECUTE FUNCTION {function}()"
    )
    return function_sql, trigger


# -- applying -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Object:
    key: str  # e.g. "view opspush.operation_runs"
    create: tuple[str, ...]  # statements that create or replace it
    drop: str


def _objects(mapping: Mapping, report: Report, triggers: bool, version: int) -> list[Object]:
    schema = quote(mapping.schema)
    objects = [
        Object(
            f"function {mapping.schema}.json_or",
            (json_function_sql(mapping.schema, version),),
            f"DROP FUNCTION IF EXISTS {schema}.json_or(text, jsonb, text, bigint)",
        )
    ]
    objects.append(displays_tables(mapping.schema))
    for name, resolved in report.tables.items():
        objects.append(
            Object(
                f"view {mapping.schema}.{name}",
                (view_sql(mapping, resolved),),
                f"DROP VIEW IF EXISTS {schema}.{quote(name)}",
            )
        )
    if triggers:
        for resolved in report.tables.values():
            made = trigger_sql(mapping, resolved)
            if made is None:
                continue
            function, trigger = made
            relation = resolved.relation
            objects.append(
                Object(
                    f"trigger {TRIGGER} on {relation}",
                    (function, trigger),
                    f"DROP TRIGGER IF EXISTS {quote(TRIGGER)} ON {relation}; "
                    f"DROP FUNCTION IF EXISTS {schema}.{quote('notify_' + resolved.table.name)}()",
                )
            )
    return objects


DISPLAY_TABLES = ("displays", "display_pairings", "display_approval_failures")


def displays_tables(schema: str) -> Object:
    """opspush's own tables for wall displays (sql/004_displays.sql), made in its schema:
    the only tables the serving role writes (README, attach grants)."""
    from ..resources import sql_dir

    tables = ", ".join(f"{quote(schema)}.{quote(name)}" for name in DISPLAY_TABLES)
    return Object(
        f"tables {schema}.displays",
        (
            f"SET LOCAL search_path TO {quote(schema)}",
            (sql_dir() / "004_displays.sql").read_text(),
            "RESET search_path",
        ),
        f"DROP TABLE IF EXISTS {tables}",
    )


def _digest(statements: tuple[str, ...]) -> str:
    return hashlib.sha256("\n;\n".join(statements).encode()).hexdigest()


async def attach(db: Db, mapping: Mapping, *, triggers: bool, say: Callable[[str], None]) -> Report:
    """Create or update opspush's schema; return the report (problems: nothing was written)."""
    schema = quote(mapping.schema)
    async with db.transaction():
        await db.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
        report = await resolve(db, mapping)
        ours = await _owned_schema(db, mapping.schema)
        if ours is False:
            report.problems.append(
                f"[attach] schema: {mapping.schema!r} exists and was not made by opspush attach"
            )
        if report.problems:
            raise Refused(report)
        if ours is None:
            await db.execute(f"CREATE SCHEMA {schema}")
            say(f"created schema {mapping.schema}")
            await db.execute(
                f"""CREATE TABLE {schema}.{LEDGER} (
                        object     text PRIMARY KEY,
                        digest     text NOT NULL,
                        drop_sql   text NOT NULL,
                        applied_at timestamptz NOT NULL DEFAULT now())"""
            )
            await db.execute(f"REVOKE ALL ON {schema}.{LEDGER} FROM PUBLIC")
        ledger = {
            r["object"]: r["digest"]
            for r in await db.fetch(f"SELECT object, digest FROM {schema}.{LEDGER}")
        }
        version = int(await db.fetchval("SHOW server_version_num"))
        wanted = _objects(mapping, report, triggers, version)
        if triggers:  # the trigger set becomes exactly the mapping's
            keep = {o.key for o in wanted}
            for key in sorted(k for k in ledger if k.startswith("trigger ") and k not in keep):
                await _drop(db, schema, key)
                say(f"dropped {key}")
        for item in wanted:
            digest = _digest(item.create)
            if ledger.get(item.key) == digest:
                continue
            for statement in item.create:
                await db.execute(statement)
            await db.execute(
                f"""INSERT INTO {schema}.{LEDGER} (object, digest, drop_sql) VALUES ($1, $2, $3)
                    ON CONFLICT (object) DO UPDATE
                    SET digest = EXCLUDED.digest, drop_sql = EXCLUDED.drop_sql,
                        applied_at = now()""",
                item.key,
                digest,
                item.drop,
            )
            say(f"{'changed' if item.key in ledger else 'created'} {item.key}")
    return report


async def detach(db: Db, mapping: Mapping, *, say: Callable[[str], None]) -> bool:
    """Drop what attach made (triggers first), then the schema. False when there is none."""
    schema = quote(mapping.schema)
    async with db.transaction():
        await db.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
        ours = await _owned_schema(db, mapping.schema)
        if ours is None:
            return False
        if ours is False:
            raise Refused(
                Report(
                    problems=[
                        f"[attach] schema: {mapping.schema!r} was not made by opspush attach; "
                        "not dropped"
                    ]
                )
            )
        keys = [r["object"] for r in await db.fetch(f"SELECT object FROM {schema}.{LEDGER}")]
        # Triggers, then views, then functions: each drop is RESTRICT, so a host object that
        # came to depend on one of ours stops the detach instead of being dropped with it.
        order = {"trigger": 0, "view": 1, "function": 2}
        for key in sorted(keys, key=lambda k: (order.get(k.split(" ")[0], 3), k)):
            await _drop(db, schema, key)
            say(f"dropped {key}")
        await db.execute(f"DROP TABLE {schema}.{LEDGER}")
        await db.execute(f"DROP SCHEMA {schema}")
        say(f"dropped schema {mapping.schema}")
    return True


async def triggers_installed(db: Db | asyncpg.Pool, schema: str) -> int:
    """How many host triggers run functions of opspush's schema (catalogue only: any role)."""
    count: int = await db.fetchval(
        """SELECT count(*) FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid
           WHERE p.pronamespace = to_regnamespace($1)""",
        quote(schema),
    )
    return count


def views_problem(found: dict[str, set[str]], schema: str) -> str | None:
    """What keeps opspush from serving from `schema`, whose relations have the columns
    `found`: a view (or a column of one) that the reads need and `attach` did not make."""
    if not any(name in found for name in DOMAIN):
        return f'has no opspush views in schema "{schema}"'
    missing = [
        f"{name}.{column}" if name in found else name
        for name, columns in DOMAIN.items()
        for column in (columns if name in found else [""])
        if name not in found or column not in found[name]
    ]
    if not missing:
        return None
    named = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
    return f'has opspush views in schema "{schema}" older than this opspush (without {named})'


async def view_columns(db: Db | asyncpg.Pool, schema: str) -> dict[str, set[str]]:
    """Each relation of `schema` with its columns (catalogue only: any role may ask)."""
    rows = await db.fetch(
        """SELECT c.relname, array_agg(a.attname::text) AS columns
           FROM pg_class c
           JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
           WHERE c.relnamespace = to_regnamespace($1) AND c.relkind IN ('v', 'm', 'r')
           GROUP BY c.relname""",
        quote(schema),
    )
    return {row["relname"]: set(row["columns"]) for row in rows}


class Refused(Exception):
    """The mapping is not usable (or the schema is not ours): nothing was written."""

    def __init__(self, report: Report) -> None:
        super().__init__("; ".join(report.problems))
        self.report = report


async def _drop(db: Db, schema: str, key: str) -> None:
    drop_sql = await db.fetchval(f"SELECT drop_sql FROM {schema}.{LEDGER} WHERE object = $1", key)
    await db.execute(drop_sql)
    await db.execute(f"DELETE FROM {schema}.{LEDGER} WHERE object = $1", key)


async def _owned_schema(db: Db, schema: str) -> bool | None:
    """None: no such schema; True: it holds our ledger; False: someone else's."""
    exists = await db.fetchval("SELECT to_regnamespace($1) IS NOT NULL", quote(schema))
    if not exists:
        return None
    ledger = await db.fetchval("SELECT to_regclass($1) IS NOT NULL", f"{quote(schema)}.{LEDGER}")
    return bool(ledger)


async def _tries(db: Db, sql: str, *args: object) -> bool:
    try:
        async with db.transaction():
            await db.fetchval(sql, *args)
    except asyncpg.PostgresError:
        return False
    return True


async def _prepare_error(db: Db, sql: str) -> str | None:
    try:
        async with db.transaction():
            await db.prepare(sql)
    except asyncpg.PostgresError as error:
        return _one_line(error)
    return None


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


def _is_null(expression: str) -> bool:
    return expression.strip().upper() == "NULL"


def _plain_column(expression: str) -> bool:
    text = expression.strip()
    return is_identifier(text) or (
        len(text) > 2 and text[0] == text[-1] == '"' and '"' not in text[1:-1]
    )


def _unquote(expression: str) -> str:
    """A column name as the catalogue spells it (unquoted names fold to lower case)."""
    text = expression.strip()
    return text[1:-1] if text.startswith('"') and text.endswith('"') else text.lower()


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"
