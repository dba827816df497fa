"""The wire protocol of protocol.md, version 1: frame parsing and frame building.

Pure: text in, a parsed command or a ProtocolError out; data in, frame text out. The
WebSocket endpoint is a thin loop around this module.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Final, Literal

from .channels import Channel, ChannelError, parse_channel

# Close codes.
CLOSE_ENDED: Final = 4000
CLOSE_UNAUTHENTICATED: Final = 4401
CLOSE_HELLO_TIMEOUT: Final = 4408
CLOSE_TOO_MANY: Final = 4429
CLOSE_TOO_BIG: Final = 1009
CLOSE_RESTARTING: Final = 1012

PauseReason = Literal["hidden", "modal"]
EndReason = Literal["terminal", "revoked", "gone"]
ErrorCode = Literal[
    "not_found",
    "forbidden",
    "bad_request",
    "unknown_channel",
    "too_many_subscriptions",
    "rate_limited",
]

# Echoing a client's channel back is fine (it is the client's own text), but not unbounded.
_MAX_ECHO = 64


class ProtocolError(ValueError):
    def __init__(self, code: ErrorCode, message: str, ch: str | None = None) -> None:
        super().__init__(message)
        self.code: ErrorCode = code
        self.message = message
        self.ch = ch


@dataclass(frozen=True, slots=True)
class Hello:
    token: str


@dataclass(frozen=True, slots=True)
class Subscribe:
    channel: Channel


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    channel: Channel


@dataclass(frozen=True, slots=True)
class Pause:
    channel: Channel | None  # None: every subscription of the socket
    reason: PauseReason


@dataclass(frozen=True, slots=True)
class Resume:
    channel: Channel | None


Command = Hello | Subscribe | Unsubscribe | Pause | Resume


def _echo(ch: Any) -> str | None:
    if not isinstance(ch, str) or len(ch) > _MAX_ECHO:
        return None
    try:
        ch.encode("utf-8")  # JSON may carry lone surrogates ("\ud800"): not sendable text
    except UnicodeEncodeError:
        return None
    return ch


def _load_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        # ValueError covers bad JSON and integers too long to convert.
        raise ProtocolError("bad_request", "frame is not valid JSON") from None
    if not isinstance(value, dict):
        raise ProtocolError("bad_request", "frame must be a JSON object")
    return value


def _channel(frame: dict[str, Any], *, required: bool) -> Channel | None:
    if "ch" not in frame or (frame["ch"] is None and not required):
        if required:
            raise ProtocolError("bad_request", "`ch` is required")
        return None
    try:
        return parse_channel(frame["ch"])
    except ChannelError as error:
        code: ErrorCode = "unknown_channel" if error.code == "unknown_channel" else "bad_request"
        raise ProtocolError(code, error.message, _echo(frame["ch"])) from None


def parse_frame(text: str) -> Command:
    """Parse one client frame; raise ProtocolError for anything protocol.md does not allow."""
    frame = _load_object(text)
    op = frame.get("op")
    if op == "hello":
        token = frame.get("token")
        if not isinstance(token, str) or not token:
            raise ProtocolError("bad_request", "`token` must be a non-empty string")
        return Hello(token)
    if op == "subscribe":
        return Subscribe(_require(_channel(frame, required=True)))
    if op == "unsubscribe":
        return Unsubscribe(_require(_channel(frame, required=True)))
    if op == "pause":
        reason = frame.get("reason", "hidden")
        if reason not in ("hidden", "modal"):
            raise ProtocolError(
                "bad_request", "`reason` must be `hidden` or `modal`", _echo(frame.get("ch"))
            )
        return Pause(_channel(frame, required=False), reason)
    if op == "resume":
        return Resume(_channel(frame, required=False))
    if not isinstance(op, str):
        raise ProtocolError("bad_request", "`op` must be a string", _echo(frame.get("ch")))
    raise ProtocolError("bad_request", "unknown `op`", _echo(frame.get("ch")))


def _require(channel: Channel | None) -> Channel:
    assert channel is not None  # _channel(required=True) never returns None
    return channel


def encode(value: Any) -> str:
    """Compact JSON; every frame and every state goes through here exactly once."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def welcome_frame(user_id: int, expires_at: str) -> str:
    return encode({"type": "welcome", "user_id": user_id, "expires_at": expires_at})


def state_frame(ch: str, data_json: str, interval: int | None) -> str:
    """Build a state frame around data that is already encoded (once per state, not viewer)."""
    interval_json = "null" if interval is None else str(int(interval))
    return f'{{"type":"state","ch":{encode(ch)},"data":{data_json},"interval":{interval_json}}}'


def end_frame(ch: str, reason: EndReason) -> str:
    return encode({"type": "end", "ch": ch, "reason": reason})


def error_frame(ch: str | None, code: ErrorCode, message: str) -> str:
    return encode({"type": "error", "ch": ch, "code": code, "message": message})


class RateLimiter:
    """A token bucket: `rate` frames per second with bursts of `burst`.

    `allow(now)` spends one token. Past the bucket, frames are refused; when more than
    `burst` frames are refused without the bucket refilling (to full: the client paused for
    `burst / rate` seconds), `exhausted` turns true and the socket should be closed with
    4429. A frame let through by a trickle of refill does not forgive the refusals, or a
    flood paced just above the rate would get errors forever and never its 4429.
    """

    __slots__ = ("_burst", "_last", "_rate", "_refused", "_tokens")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._last = now
        self._refused = 0

    def allow(self, now: float) -> bool:
        if self._rate <= 0:
            return True
        self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
        self._last = now
        if self._tokens >= self._burst:
            self._refused = 0  # it stopped long enough: forgiven
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        self._refused += 1
        return False

    @property
    def exhausted(self) -> bool:
        return self._rate > 0 and self._refused > self._burst
