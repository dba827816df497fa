"""The pure rules of presence and client events (server/pusher/presence.py, protocol.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from opspush.pusher import presence
from opspush.pusher import protocol as pusher
from opspush.pusher.presence import Change, Roster

KEY, SECRET, SOCKET = "key", "a-secret-of-sixteen+", "123.456"
DATA = '{"user_id":7,"user_info":{"name":"Ann"}}'


def _auth(text: str) -> str:
    return f"{KEY}:{pusher.sign(SECRET, text)}"


@pytest.mark.parametrize(
    ("channel_data", "auth", "ok"),
    [
        (DATA, _auth(f"{SOCKET}:presence-room:{DATA}"), True),
        (DATA, _auth(f"{SOCKET}:presence-room"), False),  # the private rule: not enough
        ('{"user_id":8}', _auth(f"{SOCKET}:presence-room:{DATA}"), False),  # other data
        (DATA, _auth(f"9.9:presence-room:{DATA}"), False),  # another socket's
        (DATA, _auth(f"{SOCKET}:presence-other:{DATA}"), False),  # another channel's
        (None, _auth(f"{SOCKET}:presence-room:None"), False),
        (DATA, None, False),
        (DATA, "other-key:" + pusher.sign(SECRET, f"{SOCKET}:presence-room:{DATA}"), False),
    ],
)
def test_presence_signature(channel_data: object, auth: object, ok: bool) -> None:
    assert pusher.presence_auth_ok(KEY, SECRET, SOCKET, "presence-room", channel_data, auth) is ok


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (DATA, ("7", {"name": "Ann"})),
        ('{"user_id":"u-1"}', ("u-1", None)),
        ('{"user_id":true}', "user_id"),
        ('{"user_id":""}', "1 to 128"),
        ('{"user_id":1.5}', "user_id"),
        ("[1]", "object"),
        ("{", "JSON"),
        (json.dumps({"user_id": 1, "user_info": "x" * 1100}), "1 KB"),
        (json.dumps({"user_id": 1, "user_info": "x" * 1000}), ("1", "x" * 1000)),
    ],
)
def test_channel_data(text: str, expected: Any) -> None:
    if isinstance(expected, tuple):
        assert presence.parse_channel_data(text) == expected
    else:
        with pytest.raises(ValueError, match=expected):
            presence.parse_channel_data(text)


@pytest.mark.parametrize(
    ("channel", "subscribed", "refused"),
    [
        ("private-chat", True, False),
        ("presence-chat", True, False),
        ("private-chat", False, True),
        ("public-chat", True, True),
        ("private-encrypted-chat", True, True),
        ("private-opspush.run.1", True, True),
        ("presence-opspush.run.1", True, True),
    ],
)
def test_client_event_channels(channel: str, subscribed: bool, refused: bool) -> None:
    assert (pusher.client_event_refusal(channel, subscribed) is not None) is refused


A, B, C = "me", "process-b", "process-c"


def _steps(roster: Roster, steps: list[tuple[Any, ...]]) -> list[list[Change]]:
    out = []
    for step in steps:
        kind, *args = step
        if kind == "join":
            out.append(roster.join(*args))
        elif kind == "leave":
            out.append(roster.leave(*args))
        elif kind == "snapshot":
            out.append(roster.snapshot(*args))
        elif kind == "forget":
            out.append(roster.forget(*args))
        else:
            out.append(roster.expire(*args))
    return out


def add(user: str, info: Any = None) -> Change:
    return Change("room", user, True, info)


def rm(user: str) -> Change:
    return Change("room", user, False)


@pytest.mark.parametrize(
    ("steps", "changes"),
    [
        # A user's first join anywhere is added; the same user elsewhere is no change.
        (
            [("join", A, "room", "1", "i", 0), ("join", B, "room", "1", "j", 0)],
            [[add("1", "i")], []],
        ),
        # Removed only when the last part holding it lets go.
        (
            [("join", A, "room", "1", None, 0), ("join", B, "room", "1", None, 0),
             ("leave", A, "room", "1", 0), ("leave", B, "room", "1", 0)],
            [[add("1")], [], [], [rm("1")]],
        ),
        # A snapshot replaces a part: who is missing leaves, who is new joins.
        (
            [("join", B, "room", "1", None, 0), ("snapshot", B, {"room": {"2": None}}, 1)],
            [[add("1")], [rm("1"), add("2")]],
        ),
        # An empty snapshot empties the part.
        ([("join", B, "room", "1", None, 0), ("snapshot", B, {}, 1)], [[add("1")], [rm("1")]]),
        # A part whose snapshots stop expires; this process's own never does.
        (
            [("join", A, "room", "1", None, 0), ("join", B, "room", "2", None, 0),
             ("expire", 29), ("expire", 31)],
            [[add("1")], [add("2")], [], [rm("2")]],
        ),
        # A fresh snapshot keeps a part alive.
        (
            [("join", B, "room", "2", None, 0), ("snapshot", B, {"room": {"2": None}}, 20),
             ("expire", 31), ("expire", 51)],
            [[add("2")], [], [], [rm("2")]],
        ),
        # Goodbye: gone at once, except users another part still holds.
        (
            [("join", B, "room", "1", None, 0), ("join", C, "room", "1", None, 0),
             ("join", B, "room", "2", None, 0), ("forget", B), ("forget", A)],
            [[add("1")], [], [add("2")], [rm("2")], []],
        ),
        # Leaving what was never joined changes nothing.
        ([("leave", B, "room", "9", 0)], [[]]),
    ],
)  # fmt: skip
def test_roster_decides_member_added_and_removed(
    steps: list[tuple[Any, ...]], changes: list[list[Change]]
) -> None:
    assert _steps(Roster(A, expiry=30, max_members=100), steps) == changes


def test_roster_union_and_subscription_data() -> None:
    roster = Roster(A, expiry=30, max_members=2)
    roster.join(A, "room", "2", {"n": "two"}, 0)
    roster.join(B, "room", "1", {"n": "one"}, 0)
    roster.join(B, "room", "2", {"n": "other"}, 0)
    assert presence.presence_data(roster.members("room")) == {
        "presence": {"ids": ["1", "2"], "hash": {"1": {"n": "one"}, "2": {"n": "two"}}, "count": 2}
    }
    # Another process's snapshot is bounded by the member limit.
    roster.snapshot(C, {"other": {str(n): None for n in range(10)}}, 0)
    assert len(roster.members("other")) == 2
    # Messages older than the last applied one from the same process are ignored.
    assert roster.fresh(B, 5, 0) and not roster.fresh(B, 5, 0) and not roster.fresh(B, 4, 0)
