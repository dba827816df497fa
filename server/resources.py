"""Where the migrations (sql/), the pages (static/) and the examples (examples/) are read from.

Installed from a wheel they are package data beside the code (`opspush/sql`, `opspush/static`,
`opspush/examples`), found through importlib.resources; in a source checkout (the editable
install of the scripts) they are the top-level directories. `OPSPUSH_SQL_DIR` /
`OPSPUSH_STATIC_DIR` override both.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

_PACKAGE = __name__.rpartition(".")[0]


def data_dir(name: str, override: str | None = None) -> Path:
    configured = os.environ.get(override) if override else None
    if configured:
        return Path(configured)
    packaged = resources.files(_PACKAGE) / name
    if isinstance(packaged, Path) and packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / name


def sql_dir() -> Path:
    return data_dir("sql", "OPSPUSH_SQL_DIR")


def static_dir() -> Path:
    return data_dir("static", "OPSPUSH_STATIC_DIR")


def examples_dir() -> Path:
    """The Laravel example (its schema and mapping), which `opspush demo --attach` uses."""
    return data_dir("examples")
