"""How opspush runs under uvicorn: one place, used by the CLI and by the tests alike."""

from __future__ import annotations

import contextlib
import gc
import logging
import signal
import socket
from types import FrameType
from typing import TYPE_CHECKING, Any

import uvicorn
from starlette.applications import Starlette

from .config import Settings

if TYPE_CHECKING:
    from .metrics import SharedMetrics


class _NoFrameTraces(logging.Filter):
    """Drop the websockets library's per-frame traces: they would log hello tokens."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno == logging.DEBUG and record.msg in ("< %s", "> %s"))


def uvicorn_config(app: Starlette, settings: Settings) -> uvicorn.Config:
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        # The websockets library's Sans-I/O core: no task per connection, backpressure on
        # send, pings, and the frame size limit (larger frames close with 1009).
        ws="websockets-sansio",
        ws_max_size=settings.max_frame_bytes,
        # Compression costs ~30 KB per socket and the frames are small: off.
        ws_per_message_deflate=False,
        ws_ping_interval=settings.ping_interval or None,
        ws_ping_timeout=settings.ping_interval or None,
        lifespan="on",
        log_level=settings.log_level,
        proxy_headers=settings.trust_proxy,
        forwarded_allow_ips="*" if settings.trust_proxy else None,
        timeout_graceful_shutdown=max(1, int(settings.drain_seconds)),
        access_log=False,
    )
    # uvicorn has configured its loggers by now; frames are traced on "uvicorn.error".
    for name in ("uvicorn.error", "websockets"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _NoFrameTraces) for f in logger.filters):
            logger.addFilter(_NoFrameTraces())
    return config


# Collect the youngest generation every 50,000 allocations rather than 700. With 10,000
# sockets the heap holds millions of long-lived objects; at the default, the frames and
# futures in flight at each of hundreds of young collections a second get promoted, which
# triggers a full collection every few seconds: a 1 s pause of every socket (the p99).
GC_THRESHOLDS = (50_000, 20, 100)


def tune_gc() -> None:
    """For a long-running server process (not the tests): fewer, cheaper collections."""
    gc.collect()
    gc.freeze()  # what start-up allocated (modules, classes) is never scanned again
    gc.set_threshold(*GC_THRESHOLDS)


class Server(uvicorn.Server):
    """uvicorn's server, except that a SIGTERM it handled gracefully ends with exit 0.

    uvicorn re-raises the signals it caught once it has shut down; for SIGTERM, the
    orchestrator's ordinary "please stop", that turns a clean drain into exit 143. A worker
    of `serve --workers` takes SIGINT the same way: Ctrl-C reaches the whole process group,
    and the supervisor is the one that decides the exit status.
    """

    def __init__(self, config: uvicorn.Config, *, worker: bool = False) -> None:
        super().__init__(config)
        self.quiet_signals = {signal.SIGTERM, signal.SIGINT} if worker else {signal.SIGTERM}

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        if sig in self.quiet_signals:
            with contextlib.suppress(AttributeError, ValueError):
                self._captured_signals.remove(sig)


def serve_app(
    settings: Settings,
    dsn: str,
    *,
    on_startup: Any = None,
    sockets: list[socket.socket] | None = None,
    shared_metrics: SharedMetrics | None = None,
) -> None:
    """Build the app and serve it until a signal: one process, or one worker of several."""
    from .app import create_app

    app = create_app(settings, dsn, on_startup=on_startup, shared_metrics=shared_metrics)
    tune_gc()
    Server(uvicorn_config(app, settings), worker=sockets is not None).run(sockets=sockets)
