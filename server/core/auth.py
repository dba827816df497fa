"""HS256 tokens: `sub` is the user id as a string, `exp` the expiry (protocol.md, Handshake)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import jwt

ALGORITHM = "HS256"
DEFAULT_MAX_TTL: Final = 24 * 3600.0  # OPSPUSH_MAX_TOKEN_TTL
CLOCK_SKEW_LEEWAY: Final = 30.0  # seconds an `iat`/`nbf` may lie in our future
MAX_TIMESTAMP: Final = 253_402_300_799  # 9999-12-31T23:59:59Z, the last second datetime holds
MAX_CHANNEL_TOKEN_TTL: Final = 900.0  # OPSPUSH_MAX_CHANNEL_TOKEN_TTL (docs/attach.md)
MAX_GRANTED_CHANNELS: Final = 100


class InvalidToken(Exception):
    """Any reason a token is not accepted. The reason is for logs, never for the client."""


@dataclass(frozen=True, slots=True)
class Identity:
    user_id: int
    expires_at: float  # UNIX seconds
    # The `channels` claim: None when the tables decide; else exactly what is granted.
    channels: frozenset[str] | None = None
    # A wall display's token (docs/displays.md): `sub` is its approver, and it may watch
    # `operations:{wall_id}` and nothing else.
    display_id: int | None = None
    wall_id: int | None = None

    @property
    def expires_at_iso(self) -> str:
        return datetime.fromtimestamp(self.expires_at, UTC).isoformat().replace("+00:00", "Z")


def verify_token(
    token: str,
    secret: str,
    now: float | None = None,
    *,
    max_ttl: float = DEFAULT_MAX_TTL,
    leeway: float = CLOCK_SKEW_LEEWAY,
    max_channel_ttl: float = MAX_CHANNEL_TOKEN_TTL,
) -> Identity:
    """The identity a token names, or InvalidToken.

    `exp` is exact (protocol.md); `iat` and `nbf` may be up to `leeway` seconds in the
    future (the host's clock may run ahead of ours); a token may live at most `max_ttl`
    seconds (`exp - iat`, or `exp - now` without `iat`), and one with a `channels` claim at
    most `max_channel_ttl` (counted from issue and from now: revocation lands at expiry).
    """
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],  # never "none", never what the token asks for
            # Time claims are checked below, as numbers, against the injectable clock.
            options={
                "require": ["sub", "exp"],
                "verify_exp": False,
                "verify_nbf": False,
                "verify_iat": False,
            },
        )
    except (jwt.PyJWTError, UnicodeEncodeError) as error:  # "\ud800" is valid JSON, not UTF-8
        raise InvalidToken(type(error).__name__) from None
    now = time.time() if now is None else now
    exp = _timestamp(claims, "exp")
    assert exp is not None  # required above
    if exp <= now:
        raise InvalidToken("expired")
    nbf = _timestamp(claims, "nbf")
    if nbf is not None and nbf > now + leeway:
        raise InvalidToken("not yet valid")
    iat = _timestamp(claims, "iat")
    if iat is not None and iat > now + leeway:
        raise InvalidToken("issued in the future")
    if exp - (now if iat is None else iat) > max_ttl:
        raise InvalidToken("lives longer than the maximum token lifetime")
    sub = claims["sub"]
    if not isinstance(sub, str) or not sub.isascii() or not sub.isdigit() or len(sub) > 18:
        raise InvalidToken("sub must be a numeric string")
    user_id = int(sub)
    if user_id < 1:
        raise InvalidToken("sub must be a positive user id")
    issued = now if iat is None else min(iat, now)
    display_id, wall_id = _display(claims)
    return Identity(
        user_id=user_id,
        expires_at=exp,
        channels=_channels(claims, exp - issued, max_channel_ttl),
        display_id=display_id,
        wall_id=wall_id,
    )


def _display(claims: dict[str, Any]) -> tuple[int | None, int | None]:
    """The `display` and `wall` claims of a display's token: both positive ids, or neither."""
    if "display" not in claims and "wall" not in claims:
        return None, None
    values = claims.get("display"), claims.get("wall")
    if "channels" in claims or not all(
        isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 2**63 - 1 for v in values
    ):
        raise InvalidToken("display and wall must be positive ids, without channels")
    return values[0], values[1]


def _channels(claims: dict[str, Any], lifetime: float, max_ttl: float) -> frozenset[str] | None:
    """The `channels` claim, checked: a list of channel names, on a short-lived token."""
    if "channels" not in claims:
        return None
    from .channels import ChannelError, parse_channel

    raw = claims["channels"]
    if not isinstance(raw, list) or len(raw) > MAX_GRANTED_CHANNELS:
        raise InvalidToken("channels must be a list of channel names")
    try:
        names = frozenset(parse_channel(name).name for name in raw)
    except ChannelError:
        raise InvalidToken("channels must be a list of channel names") from None
    if lifetime > max_ttl:
        raise InvalidToken("a channels token lives too long")
    return names


def _timestamp(claims: dict[str, Any], name: str) -> float | None:
    """A time claim as a finite number of UNIX seconds in 0..MAX_TIMESTAMP, or InvalidToken.

    JSON numbers reach us as int (of any size) or float (NaN and Infinity included, which
    Python's json accepts); the range check comes first, so neither is ever converted.
    """
    if name not in claims:
        return None
    value = claims[name]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidToken(f"{name} must be a number")
    if not 0 <= value <= MAX_TIMESTAMP:  # False for NaN too
        raise InvalidToken(f"{name} out of range")
    return float(value)


def mint_token(
    user_id: int,
    secret: str,
    ttl: float = 3600.0,
    now: float | None = None,
    *,
    channels: list[str] | None = None,
    display: tuple[int, int] | None = None,
) -> str:
    """`display`: (display id, workspace id), for a wall display's token."""
    issued = int(time.time() if now is None else now)
    claims: dict[str, object] = {"sub": str(user_id), "iat": issued, "exp": issued + int(ttl)}
    if channels is not None:
        claims["channels"] = list(channels)
    if display is not None:
        claims["display"], claims["wall"] = display
    return jwt.encode(claims, secret, algorithm=ALGORITHM)
