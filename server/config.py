"""Settings from the environment, validated once at start-up.

`Settings.from_env` raises ConfigError with a one-line message naming the variable, so
`opspush serve` can refuse to start with that line instead of a traceback.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Final
from urllib.parse import urlsplit

from .core.proxy import Network

MIN_SECRET_LENGTH: Final = 32
MIN_METRICS_TOKEN_LENGTH: Final = 16
MAX_WORKERS: Final = 256


class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class PusherApp:
    """The Pusher app the host's broadcaster is configured with (docs/pusher.md)."""

    app_id: str
    key: str
    secret: str = field(repr=False)


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
    # Frames of any kind (control and continuation too) per socket, before messages are
    # even counted: what one peer can make the frame layer do. 0: off (the conformance run).
    frame_rate: float = 100.0
    frame_burst: int = 500
    max_fragments: int = 128  # frames of one fragmented message; more closes with 1009
    # A wall display and a few tabs on two devices; an office behind one NAT (README). 0: off.
    max_connections_per_user: int = 20
    max_connections_per_address: int = 500
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
    # Proxies whose X-Forwarded-For is believed (empty: none; the peer is the client).
    trusted_proxies: tuple[Network, ...] = ()
    max_token_ttl: int = 24 * 3600  # tokens that live longer are refused
    metrics_token: str | None = None  # None: /metrics is open (keep it internal)
    frame_ancestors: str = "'none'"  # CSP frame-ancestors of the pages
    workers: int = 1  # worker processes of `serve` on one port; 0: one per core
    expected_sockets: int = 10_000  # below this, the open-file limit is reported as too low
    log_level: str = "info"
    # Attach mode (docs/attach.md): the mapping file and opspush's schema in the host database.
    config_file: str | None = None  # OPSPUSH_CONFIG; None: standalone
    attach_schema: str | None = None
    max_channel_token_ttl: float = 900.0  # a token with a `channels` claim lives this long at most
    # Wall displays (docs/displays.md).
    display_token_ttl: float = 900.0  # OPSPUSH_DISPLAY_TOKEN_TTL
    pairing_ttl: float = 600.0  # OPSPUSH_PAIRING_TTL
    pairing_rate: int = 10  # OPSPUSH_PAIRING_RATE: pairing requests per address per minute
    display_approve_url: str | None = None  # OPSPUSH_DISPLAY_APPROVE_URL; None: /displays/approve

    @property
    def attached(self) -> bool:
        return self.attach_schema is not None

    pusher: PusherApp | None = None  # the Pusher endpoint and HTTP API; None: off
    pusher_activity_timeout: int = 120  # seconds of client silence before a pusher:ping
    pusher_pong_timeout: float = 30.0  # then this long for any answer, or close 4201
    pusher_max_presence_members: int = 100  # distinct users per presence channel (Pusher's)
    pusher_client_event_rate: int = 10  # client events a second per socket (Pusher's)
    pusher_presence_interval: float = 5.0  # each process's member snapshot, this often
    pusher_presence_expiry: float = 30.0  # a process silent this long loses its members

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        secret = env.get("OPSPUSH_SECRET", "")
        if not secret:
            raise ConfigError("OPSPUSH_SECRET is required (at least 32 characters)")
        if len(secret) < MIN_SECRET_LENGTH:
            raise ConfigError(f"OPSPUSH_SECRET must be at least {MIN_SECRET_LENGTH} characters")
        defaults = cls(secret=secret)
        config_file = env.get("OPSPUSH_CONFIG") or None
        return cls(
            config_file=config_file,
            attach_schema=None if config_file is None else attach_schema(config_file),
            max_channel_token_ttl=_float(
                env, "OPSPUSH_MAX_CHANNEL_TOKEN_TTL", defaults.max_channel_token_ttl, 1, 86_400
            ),
            display_token_ttl=_float(
                env, "OPSPUSH_DISPLAY_TOKEN_TTL", defaults.display_token_ttl, 10, 86_400
            ),
            pairing_ttl=_float(env, "OPSPUSH_PAIRING_TTL", defaults.pairing_ttl, 30, 3600),
            pairing_rate=_int(env, "OPSPUSH_PAIRING_RATE", defaults.pairing_rate, 0, 100_000),
            display_approve_url=env.get("OPSPUSH_DISPLAY_APPROVE_URL") or None,
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
            frame_rate=_float(env, "OPSPUSH_FRAME_RATE", defaults.frame_rate, 0),
            frame_burst=_int(env, "OPSPUSH_FRAME_BURST", defaults.frame_burst, 1, 10_000_000),
            max_fragments=_int(env, "OPSPUSH_MAX_FRAGMENTS", defaults.max_fragments, 2, 10_000_000),
            max_connections_per_user=_int(
                env,
                "OPSPUSH_MAX_CONNECTIONS_PER_USER",
                defaults.max_connections_per_user,
                0,
                10_000_000,
            ),
            max_connections_per_address=_int(
                env,
                "OPSPUSH_MAX_CONNECTIONS_PER_ADDRESS",
                defaults.max_connections_per_address,
                0,
                10_000_000,
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
            trusted_proxies=_proxies(env.get("OPSPUSH_TRUST_PROXY", "")),
            max_token_ttl=_int(
                env, "OPSPUSH_MAX_TOKEN_TTL", defaults.max_token_ttl, 60, 366 * 24 * 3600
            ),
            metrics_token=_metrics_token(env.get("OPSPUSH_METRICS_TOKEN", "")),
            frame_ancestors=_frame_ancestors(env.get("OPSPUSH_FRAME_ANCESTORS", "")),
            workers=_int(env, "OPSPUSH_WORKERS", defaults.workers, 0, MAX_WORKERS),
            expected_sockets=_int(
                env, "OPSPUSH_EXPECTED_SOCKETS", defaults.expected_sockets, 0, 100_000_000
            ),
            log_level=_choice(
                env, "OPSPUSH_LOG_LEVEL", defaults.log_level, ("debug", "info", "warning", "error")
            ),
            pusher=_pusher_app(env),
            pusher_activity_timeout=_int(
                env, "OPSPUSH_PUSHER_ACTIVITY_TIMEOUT", defaults.pusher_activity_timeout, 1, 3600
            ),
            pusher_max_presence_members=_int(
                env,
                "OPSPUSH_PUSHER_MAX_PRESENCE_MEMBERS",
                defaults.pusher_max_presence_members,
                1,
                10_000,
            ),
            pusher_client_event_rate=_int(
                env, "OPSPUSH_PUSHER_CLIENT_EVENT_RATE", defaults.pusher_client_event_rate, 1, 1000
            ),
            pusher_presence_interval=_float(
                env, "OPSPUSH_PUSHER_PRESENCE_INTERVAL", defaults.pusher_presence_interval, 0.1, 10
            ),
            pusher_presence_expiry=_float(
                env, "OPSPUSH_PUSHER_PRESENCE_EXPIRY", defaults.pusher_presence_expiry, 0.5, 30
            ),
        )

    def with_overrides(self, **changes: object) -> Settings:
        return replace(self, **changes)  # type: ignore[arg-type]


def default_data_dir() -> str:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local/share")
    return os.path.join(base, "opspush", "pgdata")


def attach_schema(path: str) -> str:
    """opspush's schema named by a mapping file (validated whole: a bad file stops start-up)."""
    from .database.mapping import MappingError, load

    try:
        return load(path).schema
    except MappingError as error:
        raise ConfigError(f"OPSPUSH_CONFIG: {error}") from None


_PUSHER_VARIABLES = ("OPSPUSH_PUSHER_APP_ID", "OPSPUSH_PUSHER_KEY", "OPSPUSH_PUSHER_SECRET")


def _pusher_app(env: Mapping[str, str]) -> PusherApp | None:
    """All three set: the Pusher endpoint is on; none: off; some: a mistake worth refusing."""
    values = [env.get(name, "").strip() for name in _PUSHER_VARIABLES]
    if not any(values):
        return None
    missing = [name for name, value in zip(_PUSHER_VARIABLES, values, strict=True) if not value]
    if missing:
        raise ConfigError(f"{missing[0]} is required when any OPSPUSH_PUSHER_* is set")
    app_id, key, secret = values
    for name, value in (("OPSPUSH_PUSHER_APP_ID", app_id), ("OPSPUSH_PUSHER_KEY", key)):
        if not all(c.isascii() and (c.isalnum() or c in "-_") for c in value):
            raise ConfigError(f"{name} may hold only letters, digits, '-' and '_'")
    if len(secret) < 16:
        raise ConfigError("OPSPUSH_PUSHER_SECRET must be at least 16 characters")
    return PusherApp(app_id, key, secret)


def _database_url(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018  # raises ValueError for a port that is not a number
    except ValueError as error:
        raise ConfigError(f"DATABASE_URL is not a valid URL ({error})") from None
    if parts.scheme not in ("postgres", "postgresql"):
        raise ConfigError("DATABASE_URL must be a postgresql:// URL")
    return value


def database_url_only(env: Mapping[str, str] | None = None) -> str:
    """DATABASE_URL alone, validated (migrate, simulate: no secret needed)."""
    env = os.environ if env is None else env
    url = _database_url(env.get("DATABASE_URL") or None)
    if url is None:
        raise ConfigError("DATABASE_URL must be set to a postgresql:// URL")
    return url


# A host name as browsers send it in `Origin`: ASCII labels of letters, digits, `_` and inner
# hyphens (an IDN in its xn-- form), or an IP address (IPv6 in brackets).
_HOST_LABEL = re.compile(r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?", re.IGNORECASE)
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}


def _origins(value: str) -> frozenset[str]:
    """OPSPUSH_ALLOWED_ORIGINS: comma-separated scheme://host[:port], as the `Origin` header
    spells them (lower case, no default port), so that an exact match is the check."""
    origins = set()
    for item in value.split(","):
        if item.strip():
            origins.add(_origin(item.strip()))
    return frozenset(origins)


def _origin(item: str) -> str:
    def refuse(why: str) -> ConfigError:
        return ConfigError(
            f"OPSPUSH_ALLOWED_ORIGINS: {item!r} is not an origin like "
            f"https://console.example ({why})"
        )

    origin = item.rstrip("/")
    try:
        parts = urlsplit(origin)
    except ValueError:  # e.g. brackets around what is no IPv6 address
        raise refuse("the host is not a host name or IP address") from None
    try:
        port = parts.port
    except ValueError:
        raise refuse("the port must be a number from 1 to 65535") from None
    if parts.scheme not in _DEFAULT_PORTS or not parts.netloc:
        raise refuse("it must be http:// or https:// and a host")
    if parts.path or parts.query or parts.fragment or "@" in parts.netloc or "?" in origin:
        raise refuse("only scheme://host[:port], no path, query or user")
    if port == 0 or (port is None and parts.netloc.endswith(":")):
        raise refuse("the port must be a number from 1 to 65535")
    host = (parts.hostname or "").lower()
    if not _valid_host(host, bracketed=parts.netloc.startswith("[")):
        raise refuse(f"{host or 'the host'!r} is not a host name or IP address")
    netloc = f"[{host}]" if ":" in host else host
    if port is not None and port != _DEFAULT_PORTS[parts.scheme]:
        netloc += f":{port}"
    return f"{parts.scheme}://{netloc}"


def _valid_host(host: str, *, bracketed: bool) -> bool:
    if bracketed:
        try:
            return ipaddress.ip_address(host).version == 6
        except ValueError:
            return False
    labels = host.split(".")
    if labels[-1].isdigit():  # the URL standard reads it as an IPv4 address
        try:
            return ipaddress.ip_address(host).version == 4
        except ValueError:
            return False
    return len(host) <= 253 and all(_HOST_LABEL.fullmatch(label) for label in labels)


def _proxies(value: str) -> tuple[Network, ...]:
    """OPSPUSH_TRUST_PROXY: proxy addresses or CIDR ranges, separated by commas or spaces."""
    items = value.replace(",", " ").split()
    if len(items) == 1 and items[0].lower() in ("0", "false", "no", "off"):
        return ()
    if len(items) == 1 and items[0].lower() in ("1", "true", "yes", "on"):
        # It used to mean "believe X-Forwarded-For from any peer": anyone could then pick
        # their own address. Refuse rather than guess which proxy was meant.
        raise ConfigError(
            "OPSPUSH_TRUST_PROXY no longer takes 1: list the proxies' addresses or CIDR "
            "ranges, e.g. 127.0.0.1 or 10.0.0.0/8"
        )
    networks = []
    for item in items:
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ConfigError(
                f"OPSPUSH_TRUST_PROXY: {item!r} is not an IP address or CIDR range"
            ) from None
    return tuple(networks)


def _metrics_token(value: str) -> str | None:
    value = value.strip()
    if not value:
        return None
    if len(value) < MIN_METRICS_TOKEN_LENGTH or not value.isascii() or not value.isprintable():
        raise ConfigError(
            f"OPSPUSH_METRICS_TOKEN must be at least {MIN_METRICS_TOKEN_LENGTH} printable "
            "ASCII characters"
        )
    return value


# A CSP source a host page may be: a keyword, or scheme://host[:port] (the host may start
# with `*.`). Nothing that could end the directive (`;`, `,`) or add another.
_FRAME_SOURCE = re.compile(
    r"'none'|'self'|https?://(\*\.)?[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*"
    r"(:[0-9]{1,5})?",
    re.IGNORECASE,
)


def _frame_ancestors(value: str) -> str:
    """OPSPUSH_FRAME_ANCESTORS: the host pages that may embed ours (CSP frame-ancestors)."""
    sources = value.replace(",", " ").split()
    if not sources:
        return "'none'"
    for source in sources:
        if not _FRAME_SOURCE.fullmatch(source):
            raise ConfigError(
                f"OPSPUSH_FRAME_ANCESTORS: {source!r} is not 'none', 'self' or an origin like "
                "https://console.example"
            )
    if "'none'" in sources and len(sources) > 1:
        raise ConfigError("OPSPUSH_FRAME_ANCESTORS: 'none' cannot be combined with origins")
    return " ".join(sources)


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
