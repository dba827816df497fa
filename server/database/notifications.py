"""What a database notification wakes (the payloads of sql/003_notify.sql). Pure."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from ..core.channels import MAX_ID, Channel, Kind

CHANNEL = "opspush"  # the LISTEN channel


@dataclass
class Wakeup:
    channels: set[Channel] = field(default_factory=set)
    access: bool = False
    # Tenants and workspaces deleted (or soft-deleted): the runs in them are gone too, and
    # only the engine knows which runs those are.
    tenants: set[int] = field(default_factory=set)
    workspaces: set[int] = field(default_factory=set)

    def __bool__(self) -> bool:
        return bool(self.channels or self.tenants or self.workspaces) or self.access


def _id(text: str) -> int | None:
    if not text.isascii() or not text.isdigit():
        return None
    value = int(text)
    return value if 0 < value <= MAX_ID else None


def is_access(payload: str) -> bool:
    """Access facts changed (memberships, entitlements, capabilities)."""
    return payload.partition(":")[0] == "a"


def parse(payloads: Iterable[str]) -> Wakeup:
    """Fold a burst of payloads into one wake-up; unknown payloads are ignored."""
    wakeup = Wakeup()
    for payload in payloads:
        tag, _, rest = payload.partition(":")
        ids = [_id(part) for part in rest.split(":")] if rest else []
        if is_access(payload):
            wakeup.access = True
        elif tag == "r" and len(ids) == 2 and ids[0] and ids[1]:
            wakeup.channels.add(Channel(Kind.RUN, ids[0]))
            wakeup.channels.add(Channel(Kind.WALL, ids[1]))
        elif tag in ("p", "t") and len(ids) == 1 and ids[0]:
            wakeup.channels.add(Channel(Kind.REVIEW_PACK, ids[0]))
            if tag == "t":
                wakeup.tenants.add(ids[0])
        elif tag == "w" and len(ids) == 1 and ids[0]:
            wakeup.channels.add(Channel(Kind.WALL, ids[0]))
            wakeup.workspaces.add(ids[0])
    return wakeup
