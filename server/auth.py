"""HS256 tokens: `sub` is the user id as a string, `exp` the expiry (protocol.md, Handshake)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime

import jwt

ALGORITHM = "HS256"


class InvalidToken(Exception):
    """Any reason a token is not accepted. The reason is for logs, never for the client."""


@dataclass(frozen=True, slots=True)
class Identity:
    user_id: int
    expires_at: float  # UNIX seconds

    @property
    def expires_at_iso(self) -> str:
        return datetime.fromtimestamp(self.expires_at, UTC).isoformat().replace("+00:00", "Z")


def verify_token(token: str, secret: str, now: float | None = None) -> Identity:
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
    return Identity(user_id=user_id, expires_at=float(exp))


def mint_token(user_id: int, secret: str, ttl: float = 3600.0, now: float | None = None) -> str:
    issued = int(time.time() if now is None else now)
    claims = {"sub": str(user_id), "iat": issued, "exp": issued + int(ttl)}
    return jwt.encode(claims, secret, algorithm=ALGORITHM)
