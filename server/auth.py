"""HS256 tokens: `sub` is the user id as a string, `exp` the expiry (protocol.md, Handshake).

A token may also carry `channels`, the channels the host decided this user may watch
(attach.md); such a token must be short-lived.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime

import jwt

ALGORITHM = "HS256"
MAX_CHANNEL_TOKEN_TTL = 900.0
MAX_GRANTED_CHANNELS = 100


class InvalidToken(Exception):
    """Any reason a token is not accepted. The reason is for logs, never for the client."""


@dataclass(frozen=True, slots=True)
class Identity:
    user_id: int
    expires_at: float  # UNIX seconds
    # The `channels` claim: None when the tables decide; else exactly what is granted.
    channels: frozenset[str] | None = None

    @property
    def expires_at_iso(self) -> str:
        return datetime.fromtimestamp(self.expires_at, UTC).isoformat().replace("+00:00", "Z")


def verify_token(
    token: str,
    secret: str,
    now: float | None = None,
    *,
    max_channel_ttl: float = MAX_CHANNEL_TOKEN_TTL,
) -> Identity:
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],  # never "none", never what the token asks for
            options={"require": ["sub", "exp"], "verify_exp": False},
        )
    except (jwt.PyJWTError, UnicodeEncodeError) as error:  # "\ud800" is valid JSON, not UTF-8
        raise InvalidToken(type(error).__name__) from None
    # Expiry and not-before are checked here, against the injectable clock, with no leeway.
    now = time.time() if now is None else now
    exp = claims["exp"]
    if isinstance(exp, bool) or not isinstance(exp, int | float) or exp <= now:
        raise InvalidToken("expired")
    nbf = claims.get("nbf")
    if nbf is not None and (isinstance(nbf, bool) or not isinstance(nbf, int | float) or nbf > now):
        raise InvalidToken("not yet valid")
    sub = claims["sub"]
    if not isinstance(sub, str) or not sub.isascii() or not sub.isdigit() or len(sub) > 18:
        raise InvalidToken("sub must be a numeric string")
    user_id = int(sub)
    if user_id < 1:
        raise InvalidToken("sub must be a positive user id")
    channels = _channels(claims, float(exp), now, max_channel_ttl)
    return Identity(user_id=user_id, expires_at=float(exp), channels=channels)


def _channels(
    claims: dict[str, object], exp: float, now: float, max_ttl: float
) -> frozenset[str] | None:
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
    # Revocation lands at expiry only, so the lifetime is bounded: from issue, and from now.
    iat = claims.get("iat")
    issued = iat if isinstance(iat, int | float) and not isinstance(iat, bool) else now
    if exp - min(float(issued), now) > max_ttl:
        raise InvalidToken("a channels token lives too long")
    return names


def mint_token(
    user_id: int,
    secret: str,
    ttl: float = 3600.0,
    now: float | None = None,
    *,
    channels: list[str] | None = None,
) -> str:
    issued = int(time.time() if now is None else now)
    claims: dict[str, object] = {"sub": str(user_id), "iat": issued, "exp": issued + int(ttl)}
    if channels is not None:
        claims["channels"] = list(channels)
    return jwt.encode(claims, secret, algorithm=ALGORITHM)
