"""Channel names (`run:42`, `review-pack:5`, `operations:3`) and their parsing."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final


class Kind(enum.StrEnum):
    RUN = "run"  # one operation run, by run id
    REVIEW_PACK = "review-pack"  # the review pack card of a tenant, by tenant id
    WALL = "operations"  # the wall of a workspace, by workspace id


MAX_ID: Final = 2**63 - 1  # PostgreSQL bigint
MAX_CHANNEL_LENGTH: Final = 64


MAX_ID_DIGITS: Final = len(str(MAX_ID))


def valid_id(number: int) -> bool:
    """An id any table can hold: 1..2^63-1 (larger ones would fail the query, not match)."""
    return 1 <= number <= MAX_ID


def canonical_id(text: str) -> int | None:
    """The id `text` spells in canonical form (plain ASCII digits, no sign, no leading zero,
    in range), or None. One id has one spelling: `run:01` would watch run 1 while its frames
    name `run:1`, which a client matching on the name never sees."""
    if not 0 < len(text) <= MAX_ID_DIGITS or not text.isascii() or not text.isdigit():
        return None
    if text[0] == "0":
        return None
    number = int(text)
    return number if valid_id(number) else None


class ChannelError(ValueError):
    """A channel name that cannot be watched; `code` is the protocol's error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Channel:
    kind: Kind
    id: int

    @property
    def name(self) -> str:
        return f"{self.kind.value}:{self.id}"

    def __str__(self) -> str:
        return self.name


def parse_channel(name: object) -> Channel:
    """Parse a channel name, or raise ChannelError with `bad_request`/`unknown_channel`."""
    if not isinstance(name, str) or not name:
        raise ChannelError("bad_request", "`ch` must be a non-empty string")
    if len(name) > MAX_CHANNEL_LENGTH:
        raise ChannelError("bad_request", "`ch` is too long")
    kind_name, sep, id_text = name.partition(":")
    try:
        kind = Kind(kind_name)
    except ValueError:
        raise ChannelError("unknown_channel", "unknown channel kind") from None
    # Plain ASCII digits only: no sign, spaces, or other Unicode digits.
    if not sep or not id_text.isascii() or not id_text.isdigit():
        raise ChannelError("bad_request", "a channel id must be a positive integer")
    number = canonical_id(id_text)
    if number is None:
        raise ChannelError("bad_request", "channel id out of range or not canonical")
    return Channel(kind, number)
