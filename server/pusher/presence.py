"""Presence channels' members across every process (docs/pusher.md), pure: time is passed in.

Each process owns a *part*: the members its own sockets hold, per channel. A process
announces its part's changes as deltas and all of it as a snapshot every few seconds,
through the relay; every process keeps the union of all parts. A part whose snapshots
stop (its process died) expires. A user is one member of a channel while any part holds
it, so two tabs, or two processes, make one member.

Every change returns the transitions of the union, `Change`s: a user that appeared in a
channel (`info` is its user_info) or disappeared (`info` is None, `added` False). Each
process turns them into `member_added` / `member_removed` for its own sockets.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

MAX_USER_ID: Final = 128  # characters of a user id
MAX_USER_INFO: Final = 1024  # bytes of user_info's JSON

Members = dict[str, Any]  # user id -> user_info


@dataclass(frozen=True, slots=True)
class Change:
    channel: str
    user_id: str
    added: bool
    info: Any = None


@dataclass(slots=True)
class Part:
    members: dict[str, Members] = field(default_factory=dict)  # channel -> its members
    seen: float = 0.0
    seq: int = -1


def parse_channel_data(text: object) -> tuple[str, Any]:
    """`{"user_id": …, "user_info": …}` (a JSON string) → (user id as text, user_info).

    Raises ValueError with the reason: not JSON, no user id (a string or an integer, as
    Pusher's libraries send it), or a user_info over 1 KB.
    """
    if not isinstance(text, str):
        raise ValueError("channel_data must be a JSON string")
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        raise ValueError("channel_data is not valid JSON") from None
    if not isinstance(value, dict):
        raise ValueError("channel_data must be a JSON object")
    raw = value.get("user_id")
    if isinstance(raw, bool) or not isinstance(raw, str | int):
        raise ValueError("channel_data.user_id must be a string or an integer")
    user_id = str(raw)
    if not 0 < len(user_id) <= MAX_USER_ID:
        raise ValueError("channel_data.user_id must be 1 to 128 characters")
    info = value.get("user_info")
    encoded = json.dumps(info, separators=(",", ":"), ensure_ascii=False).encode()
    if len(encoded) > MAX_USER_INFO:
        raise ValueError("channel_data.user_info is larger than 1 KB")
    return user_id, info


def presence_data(members: Mapping[str, Any]) -> dict[str, Any]:
    """subscription_succeeded's data: `{"presence": {"ids", "hash", "count"}}`."""
    ids = sorted(members)
    return {"presence": {"ids": ids, "hash": {i: members[i] for i in ids}, "count": len(ids)}}


class Roster:
    """The union of every process's part; `me` is this process's own, which never expires."""

    def __init__(self, me: str, expiry: float, max_members: int) -> None:
        self.me = me
        self.expiry = expiry
        self.max_members = max_members  # per channel per part, bounding what others send
        self.parts: dict[str, Part] = {me: Part()}

    # -- reading ---------------------------------------------------------------------------

    def members(self, channel: str) -> Members:
        """The union for one channel: each user once (its info from the first part by id)."""
        union: Members = {}
        for process in sorted(self.parts):
            for user_id, info in self.parts[process].members.get(channel, {}).items():
                union.setdefault(user_id, info)
        return union

    def holds(self, channel: str, user_id: str) -> bool:
        return any(user_id in p.members.get(channel, {}) for p in self.parts.values())

    @property
    def mine(self) -> dict[str, Members]:
        return self.parts[self.me].members

    # -- changing --------------------------------------------------------------------------

    def join(self, process: str, channel: str, user_id: str, info: Any, now: float) -> list[Change]:
        return self._change(process, {channel}, now, lambda p: _put(p, channel, user_id, info))

    def leave(self, process: str, channel: str, user_id: str, now: float) -> list[Change]:
        return self._change(process, {channel}, now, lambda p: _drop(p, channel, user_id))

    def snapshot(
        self, process: str, members: Mapping[str, Mapping[str, Any]], now: float
    ) -> list[Change]:
        """Another process's whole part, as it announced it: it replaces what was known."""
        part = self.parts.get(process)
        channels = set(members) | (set(part.members) if part is not None else set())

        def replace(p: Part) -> None:
            p.members = {
                channel: dict(list(users.items())[: self.max_members])
                for channel, users in members.items()
                if users
            }

        return self._change(process, channels, now, replace)

    def forget(self, process: str) -> list[Change]:
        """A process said goodbye, or expired: its members leave (unless another holds them)."""
        part = self.parts.get(process)
        if part is None or process == self.me:
            return []
        before = {c: self.members(c) for c in part.members}
        del self.parts[process]
        return _diff(before, {c: self.members(c) for c in before})

    def expire(self, now: float) -> list[Change]:
        changes: list[Change] = []
        for process, part in list(self.parts.items()):
            if process != self.me and now - part.seen > self.expiry:
                changes += self.forget(process)
        return changes

    def fresh(self, process: str, seq: int, now: float) -> bool:
        """Is this message of `process` newer than the last one applied? (It counts as seen.)"""
        part = self.parts.setdefault(process, Part(seen=now))
        part.seen = now
        if seq <= part.seq:
            return False
        part.seq = seq
        return True

    def _change(
        self, process: str, channels: Iterable[str], now: float, apply: Any
    ) -> list[Change]:
        channels = list(channels)
        before = {c: self.members(c) for c in channels}
        part = self.parts.setdefault(process, Part())
        part.seen = now
        apply(part)
        return _diff(before, {c: self.members(c) for c in channels})


def _put(part: Part, channel: str, user_id: str, info: Any) -> None:
    users = part.members.setdefault(channel, {})
    if user_id in users or len(users) < MAX_PART_MEMBERS:
        users[user_id] = info


def _drop(part: Part, channel: str, user_id: str) -> None:
    users = part.members.get(channel)
    if users is not None:
        users.pop(user_id, None)
        if not users:
            del part.members[channel]


MAX_PART_MEMBERS: Final = 10_000  # a delta never grows a part past this (the limit is earlier)


def _diff(before: Mapping[str, Members], after: Mapping[str, Members]) -> list[Change]:
    """The union's transitions, channel by channel, users in order."""
    changes: list[Change] = []
    for channel in before:
        old, new = before[channel], after.get(channel, {})
        changes += [Change(channel, u, False) for u in sorted(old.keys() - new.keys())]
        changes += [Change(channel, u, True, new[u]) for u in sorted(new.keys() - old.keys())]
    return changes
