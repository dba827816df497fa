"""Frame parsing, channel names, frame building, the rate limiter and tokens: pure code."""

from __future__ import annotations

import json

import jwt
import pytest

from opspush.core import protocol
from opspush.core.auth import InvalidToken, mint_token, verify_token
from opspush.core.channels import Channel, ChannelError, Kind, canonical_id, parse_channel
from opspush.core.protocol import Hello, Pause, ProtocolError, Resume, Subscribe, Unsubscribe
from opspush.engine.outbox import Outbox

SECRET = "s" * 64  # long enough for HS512 too (the wrong-algorithm cases)
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
        ("run:01", "bad_request"),  # one id, one spelling: frames would name `run:1`
        ("review-pack:007", "bad_request"),
        ("operations:00", "bad_request"),
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
    ("text", "number"),
    [
        ("1", 1),
        ("42", 42),
        ("10", 10),
        ("9223372036854775807", 2**63 - 1),
        ("01", None),  # a leading zero: the same id spelled twice
        ("0042", None),
        ("0", None),
        ("00", None),
        ("", None),
        ("+1", None),
        ("-1", None),
        (" 1", None),
        ("1 ", None),
        ("1_000", None),
        ("1e3", None),
        ("٣", None),  # a non-ASCII digit
        ("9223372036854775808", None),
        ("0" * 30 + "1", None),
        ("9" * 5000, None),  # never converted: longer than any id
    ],
)
def test_canonical_ids(text: str, number: int | None) -> None:
    assert canonical_id(text) == number
    if number is not None:
        assert str(number) == text  # the only spelling of it


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


@pytest.mark.parametrize(
    ("frames_per_second", "exhausted"),
    [
        (250, True),  # the review's flood: 2,500 frames in 10 s
        (40, True),  # twice the rate, for 10 s
        (20, False),  # the rate itself
        (19, False),
    ],
)
def test_rate_limiter_paced_flood(frames_per_second: int, exhausted: bool) -> None:
    limiter = protocol.RateLimiter(rate=20, burst=100, now=0.0)
    for i in range(10 * frames_per_second):
        limiter.allow(i / frames_per_second)
        if limiter.exhausted:
            break
    assert limiter.exhausted is exhausted


def test_rate_limiter_forgives_a_client_that_slowed_down() -> None:
    limiter = protocol.RateLimiter(rate=20, burst=100, now=0.0)
    for _ in range(150):  # 100 allowed, 50 refused
        limiter.allow(0.0)
    assert limiter.allow(5.0)  # a full bucket again after burst / rate seconds
    for _ in range(99 + 60):  # the bucket, then 60 more refusals: not 50 + 60
        limiter.allow(5.0)
    assert not limiter.exhausted


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


NOW = 1_000_000
DAY = 86_400


def _claims(**claims: object) -> dict[str, object]:
    return {"sub": "7", "exp": NOW + 3600, **claims}


# Time claims, each against verify_token at NOW with the default 24 h cap and 30 s leeway.
TIME_CLAIMS_ACCEPTED = {
    "exp one second ahead": _claims(exp=NOW + 1),
    "exp as a float": _claims(exp=NOW + 0.5),
    "iat now": _claims(iat=NOW),
    "iat 30 s ahead (clock skew)": _claims(iat=NOW + 30, exp=NOW + 90),
    "nbf 30 s ahead (clock skew)": _claims(nbf=NOW + 30),
    "nbf past": _claims(nbf=NOW - 10),
    "lives exactly 24 h (exp - iat)": _claims(iat=NOW - 10, exp=NOW - 10 + DAY),
    "no iat, exp exactly 24 h ahead": _claims(exp=NOW + DAY),
}
TIME_CLAIMS_REFUSED = {
    "exp now (exact, no leeway)": _claims(exp=NOW),
    "exp a second ago": _claims(exp=NOW - 1),
    "exp 1e20": _claims(exp=1e20),
    "exp Infinity": _claims(exp=float("inf")),
    "exp -Infinity": _claims(exp=float("-inf")),
    "exp NaN": _claims(exp=float("nan")),
    "exp 10**400": _claims(exp=10**400),
    "exp true": _claims(exp=True),
    "exp a string": _claims(exp=str(NOW + 3600)),
    "exp null": _claims(exp=None),
    "exp a list": _claims(exp=[NOW + 3600]),
    "exp negative": _claims(exp=-1),
    "nbf NaN": _claims(nbf=float("nan")),
    "nbf Infinity": _claims(nbf=float("inf")),
    "nbf true": _claims(nbf=True),
    "nbf 31 s ahead": _claims(nbf=NOW + 31),
    "iat NaN": _claims(iat=float("nan")),
    "iat Infinity": _claims(iat=float("inf")),
    "iat 1e20": _claims(iat=1e20),
    "iat false": _claims(iat=False),
    "iat a string": _claims(iat="now"),
    "iat negative": _claims(iat=-1),
    "iat 31 s ahead": _claims(iat=NOW + 31, exp=NOW + 91),
    "lives 24 h + 1 s (exp - iat)": _claims(iat=NOW - 10, exp=NOW - 10 + DAY + 1),
    "no iat, exp 24 h + 1 s ahead": _claims(exp=NOW + DAY + 1),
    "exp long past iat, year 9999": _claims(iat=NOW, exp=253_402_300_799),
}


@pytest.mark.parametrize("claims", TIME_CLAIMS_ACCEPTED.values(), ids=TIME_CLAIMS_ACCEPTED.keys())
def test_time_claims_accepted(claims: dict[str, object]) -> None:
    identity = verify_token(jwt.encode(claims, SECRET, algorithm="HS256"), SECRET, now=NOW)
    assert identity.user_id == 7 and identity.expires_at == claims["exp"]
    assert identity.expires_at_iso.endswith("Z")  # representable, for the welcome frame


@pytest.mark.parametrize("claims", TIME_CLAIMS_REFUSED.values(), ids=TIME_CLAIMS_REFUSED.keys())
def test_time_claims_refused(claims: dict[str, object]) -> None:
    with pytest.raises(InvalidToken):
        verify_token(jwt.encode(claims, SECRET, algorithm="HS256"), SECRET, now=NOW)


def test_max_ttl_and_leeway_are_parameters() -> None:
    token = jwt.encode(_claims(iat=NOW + 45), SECRET, algorithm="HS256")
    with pytest.raises(InvalidToken):
        verify_token(token, SECRET, now=NOW)
    assert verify_token(token, SECRET, now=NOW, leeway=60).user_id == 7
    hour = jwt.encode(_claims(iat=NOW), SECRET, algorithm="HS256")
    assert verify_token(hour, SECRET, now=NOW, max_ttl=3600).user_id == 7
    with pytest.raises(InvalidToken):
        verify_token(hour, SECRET, now=NOW, max_ttl=3599)
