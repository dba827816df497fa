"""Frame parsing, channel names, frame building, the rate limiter and tokens: pure code."""

from __future__ import annotations

import json

import jwt
import pytest

from server import protocol
from server.auth import InvalidToken, mint_token, verify_token
from server.channels import Channel, ChannelError, Kind, parse_channel
from server.outbox import Outbox
from server.protocol import Hello, Pause, ProtocolError, Resume, Subscribe, Unsubscribe

SECRET = "s" * 32
CLAIMS = {"sub": "7", "exp": 5000}


@pytest.mark.parametrize(
    ("name", "channel"),
    [
        ("run:42", Channel(Kind.RUN, 42)),
        ("review-pack:5", Channel(Kind.REVIEW_PACK, 5)),
        ("operations:3", Channel(Kind.WALL, 3)),
        ("run:9223372036854775807", Channel(Kind.RUN, 2**63 - 1)),
    ],
)
def test_parse_channel(name: str, channel: Channel) -> None:
    assert parse_channel(name) == channel
    assert channel.name == name


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("run:1 OR 1=1", "bad_request"),
        ("run:-1", "bad_request"),
        ("run:0", "bad_request"),
        ("run:+1", "bad_request"),
        ("run: 1", "bad_request"),
        ("run:1.0", "bad_request"),
        ("run:٣", "bad_request"),  # a non-ASCII digit
        ("run:99999999999999999999", "bad_request"),
        ("run:9223372036854775808", "bad_request"),
        ("review-pack:", "bad_request"),
        ("run", "bad_request"),
        ("", "bad_request"),
        ("x" * 100, "bad_request"),
        ("tenant:1", "unknown_channel"),
        ("RUN:1", "unknown_channel"),
        (":1", "unknown_channel"),
        (42, "bad_request"),
        (None, "bad_request"),
        (["run:1"], "bad_request"),
    ],
)
def test_bad_channels(name: object, code: str) -> None:
    with pytest.raises(ChannelError) as raised:
        parse_channel(name)
    assert raised.value.code == code


@pytest.mark.parametrize(
    ("frame", "command"),
    [
        ({"op": "hello", "token": "abc"}, Hello("abc")),
        ({"op": "subscribe", "ch": "run:1"}, Subscribe(Channel(Kind.RUN, 1))),
        ({"op": "unsubscribe", "ch": "run:1"}, Unsubscribe(Channel(Kind.RUN, 1))),
        ({"op": "pause", "ch": "run:1", "reason": "modal"}, Pause(Channel(Kind.RUN, 1), "modal")),
        ({"op": "pause", "reason": "hidden"}, Pause(None, "hidden")),
        ({"op": "pause"}, Pause(None, "hidden")),
        ({"op": "resume", "ch": "operations:2"}, Resume(Channel(Kind.WALL, 2))),
        ({"op": "resume"}, Resume(None)),
        ({"op": "subscribe", "ch": "run:1", "extra": [1, 2]}, Subscribe(Channel(Kind.RUN, 1))),
    ],
)
def test_parse_frame(frame: dict[str, object], command: protocol.Command) -> None:
    assert protocol.parse_frame(json.dumps(frame)) == command


@pytest.mark.parametrize(
    ("text", "code", "ch"),
    [
        ("not json", "bad_request", None),
        ("", "bad_request", None),
        ("[1, 2]", "bad_request", None),
        ('"subscribe"', "bad_request", None),
        ("null", "bad_request", None),
        ("{}", "bad_request", None),
        ('{"op": 5}', "bad_request", None),
        ('{"op": "dance", "ch": "run:1"}', "bad_request", "run:1"),
        ('{"op": "subscribe"}', "bad_request", None),
        ('{"op": "subscribe", "ch": null}', "bad_request", None),
        ('{"op": "subscribe", "ch": "run:x"}', "bad_request", "run:x"),
        ('{"op": "subscribe", "ch": "tenant:1"}', "unknown_channel", "tenant:1"),
        ('{"op": "pause", "reason": "bored"}', "bad_request", None),
        ('{"op": "hello"}', "bad_request", None),
        ('{"op": "hello", "token": 12}', "bad_request", None),
        ("[" * 100_000 + "]" * 100_000, "bad_request", None),  # deep nesting
        ('{"op": "subscribe", "ch": "run:1", "n": ' + "9" * 10_000 + "}", "bad_request", None),
    ],
)
def test_malformed_frames(text: str, code: str, ch: str | None) -> None:
    with pytest.raises(ProtocolError) as raised:
        protocol.parse_frame(text)
    assert raised.value.code == code
    assert raised.value.ch == ch


def test_long_channels_are_not_echoed() -> None:
    with pytest.raises(ProtocolError) as raised:
        protocol.parse_frame(json.dumps({"op": "subscribe", "ch": "run:" + "1" * 500}))
    assert raised.value.ch is None


def test_state_frame_wraps_encoded_data() -> None:
    frame = protocol.state_frame("run:1", protocol.encode({"id": 1, "name": "é"}), 5)
    assert json.loads(frame) == {
        "type": "state",
        "ch": "run:1",
        "data": {"id": 1, "name": "é"},
        "interval": 5,
    }
    assert json.loads(protocol.state_frame("run:1", "{}", None))["interval"] is None


def test_end_and_error_frames() -> None:
    assert json.loads(protocol.end_frame("run:1", "revoked")) == {
        "type": "end",
        "ch": "run:1",
        "reason": "revoked",
    }
    assert json.loads(protocol.error_frame(None, "bad_request", "no")) == {
        "type": "error",
        "ch": None,
        "code": "bad_request",
        "message": "no",
    }


def test_rate_limiter_allows_bursts_then_refuses_then_gives_up() -> None:
    limiter = protocol.RateLimiter(rate=20, burst=100, now=0.0)
    assert all(limiter.allow(0.0) for _ in range(100))
    assert not limiter.allow(0.0)
    assert not limiter.exhausted
    assert limiter.allow(0.05)  # one token back after 1/20 s
    for _ in range(101):
        limiter.allow(0.05)
    assert limiter.exhausted


def test_rate_limiter_sustained_rate_is_fine() -> None:
    limiter = protocol.RateLimiter(rate=20, burst=100, now=0.0)
    assert all(limiter.allow(i / 20) for i in range(2000))
    assert not limiter.exhausted


def test_outbox_keeps_only_the_newest_state_per_channel_in_place() -> None:
    outbox = Outbox(control_limit=10)
    assert outbox.put_state("run:1", "s1") is False
    outbox.put("e1")
    assert outbox.put_state("run:2", "x1") is False
    assert outbox.put_state("run:1", "s2") is True  # replaced, kept its place
    outbox.close_after_flush(4000)
    assert [outbox.pop(), outbox.pop(), outbox.pop(), outbox.pop()] == ["s2", "e1", "x1", 4000]


def test_outbox_bounds_other_frames() -> None:
    outbox = Outbox(control_limit=3)
    for i in range(5):
        outbox.put(f"e{i}")
    assert len(outbox) == 3
    assert outbox.overflowed


class TestTokens:
    def test_round_trip(self) -> None:
        identity = verify_token(mint_token(7, SECRET, ttl=60, now=1000), SECRET, now=1001)
        assert identity.user_id == 7
        assert identity.expires_at == 1060

    @pytest.mark.parametrize(
        "token",
        [
            pytest.param(mint_token(7, "x" * 32, now=1000), id="wrong key"),
            pytest.param(
                jwt.encode({"sub": "7", "exp": 5000}, key=None, algorithm="none"), id="alg none"
            ),
            pytest.param(
                jwt.encode({"sub": "7", "exp": 5000}, SECRET, algorithm="HS512"), id="HS512"
            ),
            pytest.param(jwt.encode({"exp": 5000}, SECRET, algorithm="HS256"), id="no sub"),
            pytest.param(jwt.encode({"sub": "seven", "exp": 5000}, SECRET), id="non-numeric sub"),
            pytest.param(jwt.encode({"sub": "-7", "exp": 5000}, SECRET), id="negative sub"),
            pytest.param(jwt.encode({"sub": "0", "exp": 5000}, SECRET), id="zero sub"),
            pytest.param(jwt.encode({"sub": "7"}, SECRET), id="no exp"),
            pytest.param(jwt.encode({"sub": "7", "exp": 1000}, SECRET), id="expired"),
            pytest.param(jwt.encode({"sub": "7", "exp": 1001}, SECRET), id="expires now"),
            pytest.param(jwt.encode({"sub": "7", "exp": 5000, "nbf": 2000}, SECRET), id="not yet"),
            pytest.param("garbage", id="garbage"),
            pytest.param("", id="empty"),
        ],
    )
    def test_refused(self, token: str) -> None:
        with pytest.raises(InvalidToken):
            verify_token(token, SECRET, now=1001)
