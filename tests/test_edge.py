"""The edge's pure rules: client addresses behind proxies, security headers, the metrics
token, ids in paths and the log redaction (issue 13)."""

from __future__ import annotations

import ipaddress
import logging

import pytest

from opspush.commands.runner import REDACTED, RedactSecrets
from opspush.core.channels import MAX_ID, valid_id
from opspush.core.proxy import Network, client_address
from opspush.web import metrics
from opspush.web.headers import content_security_policy, security_headers
from opspush.web.http_api import IdConvertor

NGINX = [ipaddress.ip_network("10.0.0.5"), ipaddress.ip_network("172.16.0.0/12")]
LOOPBACK = [ipaddress.ip_network("127.0.0.1")]

# (peer, X-Forwarded-For headers, trusted proxies, the client address)
ADDRESSES: dict[str, tuple[str | None, list[str], list[Network], str]] = {
    "no proxy trusted: XFF ignored": ("203.0.113.9", ["198.51.100.1"], [], "203.0.113.9"),
    "untrusted peer: XFF ignored": ("203.0.113.9", ["198.51.100.1"], NGINX, "203.0.113.9"),
    "trusted peer, one hop": ("10.0.0.5", ["198.51.100.1"], NGINX, "198.51.100.1"),
    "trusted peer, forged left part": (
        "10.0.0.5",
        ["1.1.1.1, 198.51.100.1"],
        NGINX,
        "198.51.100.1",
    ),
    "two trusted hops, then the client": (
        "10.0.0.5",
        ["6.6.6.6, 198.51.100.1, 172.20.0.3"],
        NGINX,
        "198.51.100.1",
    ),
    "several headers, in order": (
        "10.0.0.5",
        ["6.6.6.6", "198.51.100.1, 172.20.0.3"],
        NGINX,
        "198.51.100.1",
    ),
    "trusted peer without XFF": ("10.0.0.5", [], NGINX, "10.0.0.5"),
    "every hop trusted: the leftmost": ("10.0.0.5", ["172.16.0.1, 10.0.0.5"], NGINX, "172.16.0.1"),
    "garbage hop: the last believed": ("10.0.0.5", ["1.1.1.1, nonsense"], NGINX, "10.0.0.5"),
    "garbage left of the client": ("10.0.0.5", ["nonsense, 198.51.100.1"], NGINX, "198.51.100.1"),
    "hop with a port": ("10.0.0.5", ["198.51.100.1:4711"], NGINX, "198.51.100.1"),
    "IPv6 hop": ("10.0.0.5", ["[2001:db8::1]:4711"], NGINX, "2001:db8::1"),
    "IPv6 hop without port": ("10.0.0.5", ["2001:db8::1"], NGINX, "2001:db8::1"),
    "IPv4-mapped peer": ("::ffff:10.0.0.5", ["198.51.100.1"], NGINX, "198.51.100.1"),
    "loopback proxy": ("127.0.0.1", ["198.51.100.1"], LOOPBACK, "198.51.100.1"),
    "loopback proxy, other peer": ("127.0.0.2", ["198.51.100.1"], LOOPBACK, "127.0.0.2"),
    "no peer": (None, ["198.51.100.1"], NGINX, "unknown"),
    "peer not an address": ("testclient", ["198.51.100.1"], NGINX, "testclient"),
}


@pytest.mark.parametrize(
    ("peer", "forwarded", "trusted", "expected"), ADDRESSES.values(), ids=ADDRESSES.keys()
)
def test_client_address(
    peer: str | None, forwarded: list[str], trusted: list[Network], expected: str
) -> None:
    assert client_address(peer, forwarded, trusted) == expected


CSP_HOSTS = {
    "plain host and port": ("ops.example:8080", "ws://ops.example:8080 wss://ops.example:8080"),
    "IPv6": ("[::1]:8000", "ws://[::1]:8000 wss://[::1]:8000"),
    "no host": (None, ""),
    "host trying to add a directive": ("a.example; script-src *", ""),
    "host with a space": ("a.example *", ""),
}


@pytest.mark.parametrize(("host", "sockets"), CSP_HOSTS.values(), ids=CSP_HOSTS.keys())
def test_content_security_policy(host: str | None, sockets: str) -> None:
    policy = content_security_policy(host, "'none'")
    directives = dict(d.split(" ", 1) for d in policy.split("; "))
    assert directives["default-src"] == "'self'"
    assert directives["connect-src"] == f"'self' {sockets}".strip()
    assert directives["frame-ancestors"] == "'none'"
    assert "script-src" not in directives and "*" not in policy


def test_console_origins_may_be_connected_to() -> None:
    consoles = ["https://console.example", "https://b.console.example"]
    policy = content_security_policy("ops.example", "'none'", consoles)
    connect = dict(d.split(" ", 1) for d in policy.split("; "))["connect-src"]
    assert connect == (
        "'self' ws://ops.example wss://ops.example "
        "https://b.console.example https://console.example"
    )


def test_security_headers() -> None:
    headers = security_headers("ops.example", "https://console.example")
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Referrer-Policy"] == "no-referrer"
    assert "frame-ancestors https://console.example" in headers["Content-Security-Policy"]


METRICS = {
    "no token configured": (None, None, True),
    "no token configured, any header": ("Bearer x", None, True),
    "right token": ("Bearer metrics-token-0123456789", "metrics-token-0123456789", True),
    "scheme in any case": ("bearer metrics-token-0123456789", "metrics-token-0123456789", True),
    "missing header": (None, "metrics-token-0123456789", False),
    "wrong token": ("Bearer metrics-token-0123456788", "metrics-token-0123456789", False),
    "prefix of the token": ("Bearer metrics-token", "metrics-token-0123456789", False),
    "basic scheme": ("Basic metrics-token-0123456789", "metrics-token-0123456789", False),
    "non-ASCII": ("Bearer métrics", "metrics-token-0123456789", False),
}


@pytest.mark.parametrize(("header", "token", "allowed"), METRICS.values(), ids=METRICS.keys())
def test_metrics_authorized(header: str | None, token: str | None, allowed: bool) -> None:
    assert metrics.authorized(header, token) is allowed


@pytest.mark.parametrize(
    ("text", "valid"),
    [
        ("1", True),
        (str(MAX_ID), True),
        (str(MAX_ID + 1), False),
        ("0", False),
        ("9" * 19, False),
        ("9" * 20, False),
        ("9" * 5000, False),  # past Python's 4,300-digit conversion limit
    ],
)
def test_path_ids(text: str, valid: bool) -> None:
    assert valid_id(IdConvertor().convert(text)) is valid


def _record(msg: str, *args: object, level: int = logging.DEBUG) -> logging.LogRecord:
    return logging.LogRecord("uvicorn.error", level, __file__, 1, msg, args, None)


TOKEN = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiI3In0.c2lnbmF0dXJl"


@pytest.mark.parametrize(
    ("record", "kept", "secret"),
    [
        (_record("< %s", f'TEXT \'{{"op":"hello","token":"{TOKEN}"}}\''), False, TOKEN),
        (_record("< %s: %s", "cookie", "session=abc123"), True, "abc123"),
        (_record("< %s: %s", "Authorization", "Bearer xyz789"), True, "xyz789"),
        (_record("> %s: %s", "set-cookie", "s=qqq111"), True, "qqq111"),
        (_record("something about %s", TOKEN, level=logging.ERROR), True, TOKEN),
        (_record(f"inline {TOKEN} token", level=logging.INFO), True, TOKEN),
    ],
)
def test_log_redaction(record: logging.LogRecord, kept: bool, secret: str) -> None:
    assert RedactSecrets().filter(record) is kept
    if kept:
        message = record.getMessage()
        assert secret not in message and REDACTED in message


def test_log_redaction_keeps_ordinary_lines() -> None:
    record = _record("< %s: %s", "host", "ops.example")
    assert RedactSecrets().filter(record)
    assert record.getMessage() == "< host: ops.example"
