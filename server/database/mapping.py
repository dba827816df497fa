"""The attach mapping file (docs/attach.md): which host table or query stands for each domain table.

Pure: parsing and validating the TOML's shape. Whether the tables, columns and expressions
exist is the live catalogue's question (see attach/attach.py).
"""

from __future__ import annotations

import enum
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final


class MappingError(ValueError):
    """A mapping file that cannot be used; the message is one line naming the place."""


class Kind(enum.Enum):
    """What a domain column holds, which decides how a host value is normalized."""

    ID = "bigint"  # ids and whole numbers
    TEXT = "text"
    OBJECT = "jsonb object"  # JSON whose empty value is {}
    LIST = "jsonb array"  # JSON whose empty value is []
    TIME = "timestamptz"

    @property
    def sql_type(self) -> str:
        return {Kind.OBJECT: "jsonb", Kind.LIST: "jsonb"}.get(self, self.value)


ID, TX, OB, LI, TS = Kind.ID, Kind.TEXT, Kind.OBJECT, Kind.LIST, Kind.TIME

# The tables of docs/domain.md, their columns in order, and what each holds.
DOMAIN: Final[dict[str, dict[str, Kind]]] = {
    "workspaces": {"id": ID, "name": TX},
    "tenants": {"id": ID, "workspace_id": ID, "name": TX, "external_id": TX},
    "users": {"id": ID, "name": TX, "email": TX},
    "workspace_memberships": {"workspace_id": ID, "user_id": ID, "role": TX},
    "tenant_entitlements": {"tenant_id": ID, "user_id": ID},
    "role_capabilities": {"role": TX, "capability": TX},
    "operation_type_capabilities": {"type": TX, "capability": TX},
    "operation_runs": {
        "id": ID,
        "workspace_id": ID,
        "tenant_id": ID,
        "type": TX,
        "status": TX,
        "outcome": TX,
        "context": OB,
        "summary_counts": OB,
        "failure_summary": LI,
        "initiated_by_user_id": ID,
        "created_at": TS,
        "started_at": TS,
        "completed_at": TS,
        "updated_at": TS,
    },
    "review_packs": {
        "id": ID,
        "workspace_id": ID,
        "tenant_id": ID,
        "operation_run_id": ID,
        "initiated_by_user_id": ID,
        "status": TX,
        "options": OB,
        "summary": OB,
        "generated_at": TS,
        "expires_at": TS,
        "file_path": TX,
        "file_disk": TX,
        "file_size": ID,
        "sha256": TX,
        "created_at": TS,
        "updated_at": TS,
    },
}

# The access tables: a change to one re-checks every subscription.
ACCESS_TABLES: Final = (
    "workspace_memberships",
    "tenant_entitlements",
    "role_capabilities",
    "operation_type_capabilities",
)

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*$")
_QUALIFIED = re.compile(r"^(?:[A-Za-z_][A-Za-z0-9_$]*\.)?[A-Za-z_][A-Za-z0-9_$]*$")
_ZONE = re.compile(r"^[A-Za-z0-9_/+\-:.]+$")


@dataclass(frozen=True)
class Table:
    """One domain table: a host table (`source`) with column expressions, or a query."""

    name: str
    source: str | None  # the host table, optionally schema-qualified; None when `sql` is given
    columns: dict[str, str] = field(default_factory=dict)  # domain column -> host SQL
    where: str | None = None
    sql: str | None = None

    def expression(self, column: str) -> str:
        """The host SQL for a domain column (its own name when the mapping says nothing)."""
        return self.columns.get(column, quote(column))


@dataclass(frozen=True)
class Mapping:
    schema: str
    timezone: str
    tables: dict[str, Table]
    path: str = ""


def quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def is_identifier(text: str) -> bool:
    return bool(_IDENTIFIER.match(text))


def load(path: str | Path) -> Mapping:
    """Read and validate a mapping file; raise MappingError with one line naming the problem."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise MappingError(f"{path}: cannot read: {error.strerror or error}") from None
    return parse(text, str(path))


def parse(text: str, path: str = "<mapping>") -> Mapping:
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise MappingError(f"{path}: TOML syntax error: {error}") from None
    unknown = set(document) - {"attach", "tables"}
    if unknown:
        raise MappingError(f"{path}: unknown section [{sorted(unknown)[0]}]")
    attach = _table(document.get("attach", {}), f"{path}: [attach]")
    _only(attach, {"schema", "timezone"}, f"{path}: [attach]")
    schema = _string(attach.get("schema", "opspush"), f"{path}: [attach] schema")
    if not is_identifier(schema) or schema.lower().startswith("pg_"):
        raise MappingError(f"{path}: [attach] schema {schema!r} must be a plain identifier")
    timezone = _string(attach.get("timezone", "UTC"), f"{path}: [attach] timezone")
    if not _ZONE.match(timezone):
        raise MappingError(f"{path}: [attach] timezone {timezone!r} is not a time zone name")
    sections = _table(document.get("tables", {}), f"{path}: [tables]")
    for name in sections:
        if name not in DOMAIN:
            raise MappingError(
                f"{path}: [tables.{name}] is no domain table (one of {', '.join(DOMAIN)})"
            )
    tables = {name: _section(name, sections.get(name, {}), path) for name in DOMAIN}
    return Mapping(schema=schema, timezone=timezone, tables=tables, path=path)


def _section(name: str, raw: Any, path: str) -> Table:
    where = f"{path}: [tables.{name}]"
    section = _table(raw, where)
    _only(section, {"from", "columns", "where", "sql"}, where)
    if "sql" in section:
        if "from" in section:
            raise MappingError(f"{where} sets both `from` and `sql`; choose one")
        if "columns" in section or "where" in section:
            raise MappingError(f"{where}: `columns` and `where` go with `from`, not with `sql`")
        return Table(name, None, sql=_string(section["sql"], f"{where} sql"))
    source = _string(section.get("from", name), f"{where} from")
    if not _QUALIFIED.match(source):
        raise MappingError(f"{where} from {source!r} must be a table name, optionally schema.table")
    columns = _table(section.get("columns", {}), f"{where}.columns")
    for column, expression in columns.items():
        if column not in DOMAIN[name]:
            raise MappingError(
                f"{where}.columns: {column!r} is no column of {name} "
                f"(one of {', '.join(DOMAIN[name])})"
            )
        _string(expression, f"{where}.columns {column}")
    where_sql = section.get("where")
    return Table(
        name,
        source,
        columns={c: _string(e, "") for c, e in columns.items()},
        where=None if where_sql is None else _string(where_sql, f"{where} where"),
    )


def _table(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise MappingError(f"{where} must be a table")
    return value


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise MappingError(f"{where} must be a non-empty string")
    if "\x00" in value:
        raise MappingError(f"{where} must not contain NUL")
    return value.strip()


def _only(section: dict[str, Any], allowed: set[str], where: str) -> None:
    extra = sorted(set(section) - allowed)
    if extra:
        raise MappingError(
            f"{where}: unknown key {extra[0]!r} (allowed: {', '.join(sorted(allowed))})"
        )
