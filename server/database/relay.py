"""Messages of the Pusher HTTP API to every opspush process, through PostgreSQL NOTIFY.

A NOTIFY payload holds at most 8000 bytes and an event's data alone may be 10 KB, so a
message is cut into numbered chunks sent by one statement (one transaction): PostgreSQL
delivers a transaction's notifications together, and folds identical payloads, which the
numbering prevents. Every process's listener feeds the chunks to a `Reassembler`. No table
is needed, so this also works against a host database opspush may only read.
"""

from __future__ import annotations

import json
import secrets
import time
from collections import OrderedDict
from typing import Any, Final

import asyncpg

CHANNEL: Final = "opspush_pusher"  # the LISTEN channel, beside notifications.CHANNEL
CHUNK: Final = 7900  # bytes of JSON per payload; with its header, under the 8000-byte limit
MAX_PARTIAL: Final = 256  # messages being reassembled at once; past this the oldest is dropped
PARTIAL_SECONDS: Final = 30.0  # a message whose chunks stop coming is dropped after this


def chunks(message: dict[str, Any], size: int = CHUNK) -> list[str]:
    """`<id>:<index>:<count>:<piece>` payloads, cut between UTF-8 characters."""
    data = json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode()
    pieces: list[str] = []
    start = 0
    while start < len(data) or not pieces:
        end = min(len(data), start + size - 64)  # room for the header
        while end < len(data) and data[end] & 0xC0 == 0x80:
            end -= 1  # never inside a character: each payload must be valid text
        pieces.append(data[start:end].decode())
        start = end
    message_id = secrets.token_hex(8)
    return [f"{message_id}:{i}:{len(pieces)}:{piece}" for i, piece in enumerate(pieces)]


async def publish(pool: asyncpg.Pool, message: dict[str, Any]) -> None:
    """Send a message to every process (this one included) in one transaction."""
    await pool.execute(
        "SELECT count(pg_notify($1, p)) FROM unnest($2::text[]) AS p", CHANNEL, chunks(message)
    )


class Reassembler:
    """Chunks in, whole messages out; malformed or abandoned pieces are dropped."""

    def __init__(self) -> None:
        self._partial: OrderedDict[str, tuple[float, list[str | None]]] = OrderedDict()
        self.dropped = 0

    def feed(self, payload: str, now: float | None = None) -> dict[str, Any] | None:
        now = time.monotonic() if now is None else now
        parts = payload.split(":", 3)
        if len(parts) != 4 or not parts[1].isdigit() or not parts[2].isdigit():
            self.dropped += 1
            return None
        message_id, index, count, piece = parts[0], int(parts[1]), int(parts[2]), parts[3]
        if not 0 <= index < count <= 10_000:
            self.dropped += 1
            return None
        if count == 1:
            return self._decode(piece)
        self._expire(now)
        started, pieces = self._partial.get(message_id, (now, [None] * count))
        if len(pieces) != count:
            self.dropped += 1
            return None
        pieces[index] = piece
        if any(p is None for p in pieces):
            self._partial[message_id] = (started, pieces)
            while len(self._partial) > MAX_PARTIAL:
                self._partial.popitem(last=False)
                self.dropped += 1
            return None
        self._partial.pop(message_id, None)
        return self._decode("".join(p for p in pieces if p is not None))

    def _expire(self, now: float) -> None:
        while self._partial:
            message_id, (started, _) = next(iter(self._partial.items()))
            if now - started < PARTIAL_SECONDS:
                return
            del self._partial[message_id]
            self.dropped += 1

    def _decode(self, text: str) -> dict[str, Any] | None:
        try:
            value = json.loads(text)
        except ValueError:
            value = None
        if not isinstance(value, dict):
            self.dropped += 1
            return None
        return value
