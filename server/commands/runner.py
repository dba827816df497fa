"""How opspush runs under uvicorn: one place, used by the CLI and by the tests alike."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import logging
import re
import signal
import socket
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING, Any, cast

import uvicorn
from starlette.applications import Starlette

from ..config import ConfigError, Settings
from ..pusher.websocket import PATH_PREFIX, PusherConnection
from ..web.connection import no_such_path
from ..web.deadline import BASE as HTTP_BASE
from ..web.deadline import MAX_HEAD_BYTES, http_protocol
from ..web.engine_socket import connection_factory
from ..web.websocket import ViewerConnection

# Headers whose values are credentials: never logged, at any level.
SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie"})
# A JWT (header.payload.signature, base64url, the header starting `{"`): a token, wherever
# it turns up in a message.
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
REDACTED = "[redacted]"

if TYPE_CHECKING:
    from ..web.metrics import SharedMetrics


class RedactSecrets(logging.Filter):
    """Keep tokens, cookies and Authorization headers out of every log line.

    At DEBUG the websockets library traces every frame (hello tokens) and every handshake
    header (Cookie, Authorization) on uvicorn's logger: frame traces are dropped, secret
    headers keep their name only, and anything shaped like a JWT is masked.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.DEBUG and record.msg in ("< %s", "> %s"):
            return False
        args = record.args
        if (
            record.msg in ("< %s: %s", "> %s: %s")
            and isinstance(args, tuple)
            and len(args) == 2
            and str(args[0]).lower() in SECRET_HEADERS
        ):
            record.args = (args[0], REDACTED)
        try:
            message = record.getMessage()
        except Exception:  # a malformed record is logging's to report, not ours
            return True
        if "eyJ" in message:
            masked = _JWT.sub(REDACTED, message)
            if masked != message:
                record.msg, record.args = masked, ()
        return True


# The loggers that trace handshakes and frames: uvicorn's (its websockets-sansio protocol
# logs on "uvicorn.error") and the websockets library's own.
REDACTED_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "websockets", "websockets.server")


def redact_logs() -> None:
    for name in REDACTED_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactSecrets) for f in logger.filters):
            logger.addFilter(RedactSecrets())


def uvicorn_config(
    app: Starlette,
    settings: Settings,
    websocket_paths: dict[str, Callable[..., asyncio.Protocol]] | None = None,
    *,
    http_base: type[asyncio.Protocol] | None = None,
) -> uvicorn.Config:
    """How `opspush serve` runs the app; `websocket_paths` adds upgrade paths served by
    protocols of their own beside `/ws` (the conformance suite's echo); `http_base` picks
    an HTTP parser other than uvicorn's "auto" choice (the tests run both)."""

    def service() -> Any:
        return getattr(app.state, "service", None)

    paths: dict[str, Callable[..., asyncio.Protocol]] = {
        "/ws": connection_factory(ViewerConnection, service)
    }
    if settings.pusher is not None:
        paths[PATH_PREFIX] = connection_factory(PusherConnection, service)  # /app/{key}
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        # A request that never completes (slowloris), a head past 32 KiB, or too many HTTP
        # connections from one address are closed (web/deadline.py).
        # Every WebSocket is served on the frame layer (web/connection.py, on the websockets
        # library's Sans-I/O core), without ASGI: `/ws` and the Pusher endpoint by their
        # own protocols, any other path by a 404.
        http=http_protocol(
            settings.hello_timeout,
            {**paths, **(websocket_paths or {})},
            max_per_address=settings.max_connections_per_address,
            trusted_proxies=settings.trusted_proxies,
            base=http_base or HTTP_BASE,
        ),
        # h11's own cap (16 KiB by default) would answer 400 and reset the connection
        # before ours answers 431.
        h11_max_incomplete_event_size=2 * MAX_HEAD_BYTES,
        ws=cast(Any, no_such_path),
        lifespan="on",
        log_level=settings.log_level,
        # X-Forwarded-For is read by Service.client_address (core/proxy.py), for the trusted
        # proxies only; uvicorn's own reading would believe it by other rules.
        proxy_headers=False,
        timeout_graceful_shutdown=max(1, int(settings.drain_seconds)),
        access_log=False,
        # uvicorn's loggers reach the root, in opspush's one format (commands/logs.py),
        # rather than in a format of their own beside it.
        log_config=None,
    )
    redact_logs()  # uvicorn has configured its loggers by now
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


class ListenError(ConfigError):
    """The address cannot be listened on: one line, exit 2 (the CLI prints it)."""


def address(host: str, port: int) -> str:
    """`host:port`, with an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def listen_problem(host: str, port: int, error: OSError) -> str:
    """The one line for a failed bind, naming the address."""
    place = address(host, port)
    if error.errno == errno.EADDRINUSE:
        return f"{place} is already in use"
    return f"cannot listen on {place}: {error.strerror or error}"


def bind(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """A TCP socket bound to host:port (not yet listening), as uvicorn would bind it; a port
    in use or a host that does not resolve is a ListenError. Bound before anything starts or
    prints, so that such a mistake is the only thing said."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise ListenError(listen_problem(host, port, error)) from None
    return sock


class Server(uvicorn.Server):
    """uvicorn's server, except that a SIGTERM it handled gracefully ends with exit 0.

    uvicorn re-raises the signals it caught once it has shut down; for SIGTERM, the
    orchestrator's ordinary "please stop", that turns a clean drain into exit 143. A worker
    of `serve --workers` takes SIGINT the same way: Ctrl-C reaches the whole process group,
    and the supervisor is the one that decides the exit status.
    """

    def __init__(self, config: uvicorn.Config, *, worker: bool = False) -> None:
        super().__init__(config)
        self.worker = worker
        self.quiet_signals = {signal.SIGTERM, signal.SIGINT} if worker else {signal.SIGTERM}

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if sockets and not self.worker and not self.should_exit:
            # uvicorn says where it listens only for sockets it bound itself.
            host, port = sockets[0].getsockname()[:2]
            logging.getLogger("uvicorn.error").info(
                "Uvicorn running on http://%s (Press CTRL+C to quit)", address(host, port)
            )

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
    extra_routes: list[Any] | None = None,
    sockets: list[socket.socket] | None = None,
    worker: bool = False,
    shared_metrics: SharedMetrics | None = None,
) -> None:
    """Build the app and serve it until a signal: one process, or one worker of several
    (`worker`); on `sockets` already bound, or on a socket uvicorn binds."""
    from ..app import create_app

    app = create_app(
        settings,
        dsn,
        on_startup=on_startup,
        extra_routes=extra_routes,
        shared_metrics=shared_metrics,
    )
    tune_gc()
    Server(uvicorn_config(app, settings), worker=worker).run(sockets=sockets)
