"""Settings from the environment, validated once at start-up.

`Settings.from_env` raises ConfigError with a one-line message naming the variable, so
`opspush serve` can refuse to start with that line instead of a traceback.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Final
from urllib.parse import urlsplit

MIN_SECRET_LENGTH: Final = 32
MAX_WORKERS: Final = 256


class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class Settings:
    secret: str
    database_url: str | None = None  # None: start the embedded PostgreSQL
    allowed_origins: frozenset[str] = frozenset()  # empty: same origin only
    host: str = "127.0.0.1"
    port: int = 8000
    data_dir: str = field(default_factory=lambda: default_data_dir())
    pool_size: int = 4
    max_frame_bytes: int = 64 * 1024
    max_subscriptions: int = 100
    rate_per_second: float = 20.0
    rate_burst: int = 100
    max_connections_per_user: int = 0  # 0: unlimited
    max_connections_per_address: int = 0
    admission_rate: float = 500.0  # new sockets per second per process; 0: unlimited
    admission_burst: int = 1000
    hello_timeout: float = 10.0
    recheck_interval: float = 5.0  # access re-checks; revocation lands within 2x this
    send_timeout: float = 30.0  # a viewer that reads nothing this long is closed (4429)
    ping_interval: float = 20.0
    notify: bool = True
    notify_window: float = 0.02  # notifications arriving this close together share a read
    drain_seconds: float = 10.0
    wall_max_runs: int = 500
    workers: int = 1  # worker processes of `serve` on one port; 0: one per core
    expected_sockets: int = 10_000  # below this, the open-file limit is reported as too low
    trust_proxy: bool = False  # take the client address from X-Forwarded-For
    log_level: str = "info"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        secret = env.get("OPSPUSH_SECRET", "")
        if not secret:
            raise ConfigError("OPSPUSH_SECRET is required (at least 32 characters)")
        if len(secret) < MIN_SECRET_LENGTH:
            raise ConfigError(f"OPSPUSH_SECRET must be at least {MIN_SECRET_LENGTH} characters")
        defaults = cls(secret=secret)
        return cls(
            secret=secret,
            database_url=_database_url(env.get("DATABASE_URL") or None),
            allowed_origins=_origins(env.get("OPSPUSH_ALLOWED_ORIGINS", "")),
            host=env.get("OPSPUSH_HOST") or defaults.host,
            port=_int(env, "OPSPUSH_PORT", defaults.port, 0, 65535),
            data_dir=env.get("OPSPUSH_DATA_DIR") or defaults.data_dir,
            pool_size=_int(env, "OPSPUSH_POOL_SIZE", defaults.pool_size, 1, 1000),
            max_frame_bytes=_int(
                env, "OPSPUSH_MAX_FRAME_BYTES", defaults.max_frame_bytes, 256, 16 * 2**20
            ),
            max_subscriptions=_int(
                env, "OPSPUSH_MAX_SUBSCRIPTIONS", defaults.max_subscriptions, 1, 100_000
            ),
            rate_per_second=_float(env, "OPSPUSH_RATE_LIMIT", defaults.rate_per_second, 0),
            rate_burst=_int(env, "OPSPUSH_RATE_BURST", defaults.rate_burst, 1, 1_000_000),
            max_connections_per_user=_int(
                env, "OPSPUSH_MAX_CONNECTIONS_PER_USER", 0, 0, 10_000_000
            ),
            max_connections_per_address=_int(
                env, "OPSPUSH_MAX_CONNECTIONS_PER_ADDRESS", 0, 0, 10_000_000
            ),
            admission_rate=_float(env, "OPSPUSH_ADMISSION_RATE", defaults.admission_rate, 0),
            admission_burst=_int(
                env, "OPSPUSH_ADMISSION_BURST", defaults.admission_burst, 1, 10_000_000
            ),
            hello_timeout=_float(env, "OPSPUSH_HELLO_TIMEOUT", defaults.hello_timeout, 0.1),
            recheck_interval=_float(
                env, "OPSPUSH_RECHECK_INTERVAL", defaults.recheck_interval, 0.1, 5.0
            ),
            send_timeout=_float(env, "OPSPUSH_SEND_TIMEOUT", defaults.send_timeout, 0.1),
            ping_interval=_float(env, "OPSPUSH_PING_INTERVAL", defaults.ping_interval, 0),
            notify=_bool(env, "OPSPUSH_NOTIFY", defaults.notify),
            notify_window=_float(env, "OPSPUSH_NOTIFY_WINDOW", defaults.notify_window, 0, 5),
            drain_seconds=_float(env, "OPSPUSH_DRAIN_SECONDS", defaults.drain_seconds, 0),
            wall_max_runs=_int(env, "OPSPUSH_WALL_MAX_RUNS", defaults.wall_max_runs, 1, 100_000),
            workers=_int(env, "OPSPUSH_WORKERS", defaults.workers, 0, MAX_WORKERS),
            expected_sockets=_int(
                env, "OPSPUSH_EXPECTED_SOCKETS", defaults.expected_sockets, 0, 100_000_000
            ),
            trust_proxy=_bool(env, "OPSPUSH_TRUST_PROXY", defaults.trust_proxy),
            log_level=_choice(
                env, "OPSPUSH_LOG_LEVEL", defaults.log_level, ("debug", "info", "warning", "error")
            ),
        )

    def with_overrides(self, **changes: object) -> Settings:
        return replace(self, **changes)  # type: ignore[arg-type]


def default_data_dir() -> str:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local/share")
    return os.path.join(base, "opspush", "pgdata")


def _database_url(value: str | None) -> str | None:
    if value is None:
        return None
    if urlsplit(value).scheme not in ("postgres", "postgresql"):
        raise ConfigError("DATABASE_URL must be a postgresql:// URL")
    return value


def _origins(value: str) -> frozenset[str]:
    origins = set()
    for item in value.split(","):
        origin = item.strip().rstrip("/")
        if not origin:
            continue
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.path:
            raise ConfigError(
                f"OPSPUSH_ALLOWED_ORIGINS: {origin!r} is not an origin like https://console.example"
            )
        origins.add(f"{parts.scheme}://{parts.netloc.lower()}")
    return frozenset(origins)


def _int(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, not {raw!r}") from None
    if not low <= value <= high:
        raise ConfigError(f"{name} must be between {low} and {high}, not {value}")
    return value


def _float(
    env: Mapping[str, str], name: str, default: float, low: float, high: float = 1e9
) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, not {raw!r}") from None
    if not low <= value <= high:
        raise ConfigError(f"{name} must be between {low:g} and {high:g}, not {value:g}")
    return value


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be 1 or 0, not {raw!r}")


def _choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, not {raw!r}")
    return raw
