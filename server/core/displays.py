"""Wall displays (docs/displays.md), the pure parts: pairing codes, secrets and their hashes,
the abuse limits and the access decision of a display. Plain functions of data and time.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Final, Literal

from .access import CapabilityTable, Decision, UserFacts, decide_wall

# RFC 8628's suggestion: consonants only, so no words and none of I/1, O/0, U/V; no digits
# at all; upper case when shown, any case when typed.
ALPHABET: Final = "BCDFGHJKLMNPQRSTVWXZ"
CODE_LENGTH: Final = 8  # 20^8 ≈ 2.6·10^10 codes, against a handful of live ones per minute
SECRET_BYTES: Final = 32  # the credential and the device code: 256 bits each
CREDENTIAL_PREFIX: Final = "opd_"

PAIRING_TTL: Final = 600.0  # OPSPUSH_PAIRING_TTL
PAIRING_RATE: Final = 10  # OPSPUSH_PAIRING_RATE: pairing requests per address per minute
PAIRING_WINDOW: Final = 60.0
MAX_PENDING_PER_ADDRESS: Final = 3  # codes waiting for approval, per address
APPROVAL_FAILURES: Final = 5  # wrong codes an approver may give ...
APPROVAL_WINDOW: Final = 600.0  # ... in this many seconds
POLL_INTERVAL: Final = 2  # seconds between a page's polls of its pairing
DISPLAY_TOKEN_TTL: Final = 900.0  # OPSPUSH_DISPLAY_TOKEN_TTL
MAX_NAME_LENGTH: Final = 100


def new_user_code(choice: Callable[[str], str] = secrets.choice) -> str:
    """Eight characters of ALPHABET, normalized (no dash)."""
    return "".join(choice(ALPHABET) for _ in range(CODE_LENGTH))


def format_code(code: str) -> str:
    """`XXXX-XXXX`, as shown and typed."""
    return f"{code[:4]}-{code[4:]}"


def normalize_code(text: object) -> str | None:
    """A code as typed (any case, with or without the dash or spaces), or None when it
    cannot be one: what is stored and compared is this normal form's hash."""
    if not isinstance(text, str) or len(text) > 32:
        return None
    code = "".join(c for c in text.upper() if c not in "- ")
    if len(code) != CODE_LENGTH or any(c not in ALPHABET for c in code):
        return None
    return code


def new_secret(prefix: str = "") -> str:
    return prefix + secrets.token_urlsafe(SECRET_BYTES)


def new_credential() -> str:
    return new_secret(CREDENTIAL_PREFIX)


def digest(secret: str) -> str:
    """What is stored of a code, device code or credential: a SHA-256 (the secrets are
    random and long, so a fast hash is enough; the codes live ten minutes)."""
    return hashlib.sha256(secret.encode()).hexdigest()


def plausible_secret(text: object) -> bool:
    return isinstance(text, str) and 20 <= len(text) <= 200 and text.isascii()


def valid_name(text: object) -> str | None:
    """A display's name, trimmed, or None when empty, too long or with control characters."""
    if not isinstance(text, str):
        return None
    name = text.strip()
    if not name or len(name) > MAX_NAME_LENGTH or any(ord(c) < 32 or ord(c) == 127 for c in name):
        return None
    return name


# -- abuse limits ---------------------------------------------------------------------------


def within_window(times: list[datetime], now: datetime, window: float) -> int:
    """How many of `times` fall in the `window` seconds up to `now`."""
    return sum(1 for t in times if 0 <= (now - t).total_seconds() < window)


PairingRefusal = Literal["rate_limited", "too_many_pending"]


def pairing_refusal(
    recent: int, pending: int, *, rate: int, max_pending: int
) -> PairingRefusal | None:
    """Refuse a pairing request from an address that asked `recent` times in the last
    minute and has `pending` codes waiting (0 for either limit: none)."""
    if rate and recent >= rate:
        return "rate_limited"
    if max_pending and pending >= max_pending:
        return "too_many_pending"
    return None


def approvals_blocked(failures: int, limit: int = APPROVAL_FAILURES) -> bool:
    """An approver who gave `failures` wrong codes in the window may try no more for now."""
    return failures >= limit


# -- pairing state, as the page that holds the device code sees it ---------------------------


@dataclass(frozen=True)
class Pairing:
    expires_at: datetime
    display_id: int | None  # set once approved
    used: bool


PairingState = Literal["pending", "approved", "expired"]


def pairing_state(pairing: Pairing | None, now: datetime) -> PairingState:
    """Unknown, used and expired are one answer: `expired` (the page asks for a new code)."""
    if pairing is None or pairing.used:
        return "expired"
    if pairing.display_id is not None:
        return "approved"
    if pairing.expires_at <= now:
        return "expired"
    return "pending"


# -- the access decision of a display --------------------------------------------------------


@dataclass(frozen=True)
class Display:
    id: int
    workspace_id: int
    approver_id: int
    revoked: bool


DisplayDecision = Literal["allowed", "revoked", "unknown"]


def decide_display(
    display: Display | None,
    approver: UserFacts,
    caps: CapabilityTable,
    workspace_exists: bool,
) -> DisplayDecision:
    """May this display (its credential) still be given a token for its wall?

    `unknown`: no such credential; `revoked`: revoked, or its approver may no longer watch
    the wall (the approver's rights are the display's, never more); else `allowed`.
    """
    if display is None:
        return "unknown"
    if display.revoked:
        return "revoked"
    if not approver.exists or approver.user_id != display.approver_id:
        return "revoked"
    if decide_wall(approver, caps, display.workspace_id, workspace_exists) != "allowed":
        return "revoked"
    return "allowed"


def approver_decision(
    approver: UserFacts, caps: CapabilityTable, workspace_id: int, workspace_exists: bool
) -> Decision:
    """Who may approve a display for a wall: whoever may watch that wall (the same
    `not_found` / `forbidden` as a subscription to it)."""
    if not approver.exists:
        return "not_found"
    return decide_wall(approver, caps, workspace_id, workspace_exists)
