"""The pure parts of the Pusher endpoint: names, signatures, bodies, frames, relay chunks."""

from __future__ import annotations

import json
import time

import pusher as pusher_library
import pytest
from pusher.http import Request

from opspush.config import ConfigError, Settings
from opspush.core import protocol
from opspush.core.channels import Channel, Kind
from opspush.database.relay import CHUNK, Reassembler, chunks
from opspush.pusher import protocol as pusher

KEY, SECRET = "key", "secret-0123456789abcdef"
LIBRARY = pusher_library.Pusher(app_id="1", key=KEY, secret=SECRET)


@pytest.mark.parametrize(
    ("name", "channel"),
    [
        ("private-opspush.run.42", Channel(Kind.RUN, 42)),
        ("private-opspush.review-pack.5", Channel(Kind.REVIEW_PACK, 5)),
        ("private-opspush.operations.3", Channel(Kind.WALL, 3)),
        ("private-opspush.run.0", None),
        ("private-opspush.run.01", None),  # events would come back on `…run.1`
        ("private-opspush.review-pack.007", None),
        ("private-opspush.operations.00", None),
        ("private-opspush.run.-1", None),
        ("private-opspush.run.1.2", None),
        ("private-opspush.run.99999999999999999999", None),
        ("private-opspush.pack.1", None),
        ("opspush.run.1", None),
        ("private-orders.1", None),
    ],
)
def test_own_channel_names(name: str, channel: Channel | None) -> None:
    assert pusher.own_channel(name) == channel
    if channel is not None:
        assert pusher.pusher_name(channel.name) == name


@pytest.mark.parametrize(
    ("name", "own"),
    [("opspush.x", True), ("private-opspush.x", True), ("presence-opspush.x", True),
     ("orders", False), ("private-orders", False), ("private-encrypted-opspush.x", False)],
)  # fmt: skip
def test_opspush_names_are_reserved_whatever_the_prefix(name: str, own: bool) -> None:
    assert pusher.is_own(name) is own


def test_signatures_made_by_pushers_library_are_accepted_and_bound() -> None:
    auth = LIBRARY.authenticate(channel="private-a", socket_id="1.2")["auth"]
    assert pusher.channel_auth_ok(KEY, SECRET, "1.2", "private-a", auth)
    assert not pusher.channel_auth_ok(KEY, SECRET, "1.3", "private-a", auth)
    assert not pusher.channel_auth_ok(KEY, SECRET, "1.2", "private-b", auth)
    assert not pusher.channel_auth_ok("other", SECRET, "1.2", "private-a", auth)
    assert not pusher.channel_auth_ok(KEY, SECRET, "1.2", "private-a", None)
    signed = LIBRARY.authenticate_user("1.2", {"id": "7"})
    assert pusher.user_auth_ok(KEY, SECRET, "1.2", signed["user_data"], signed["auth"])
    assert not pusher.user_auth_ok(KEY, SECRET, "1.2", '{"id":"8"}', signed["auth"])
    assert pusher.signed_user_id(signed["user_data"]) == 7


@pytest.mark.parametrize("user_data", ['{"id":"x"}', '{"id":0}', "[]", "nope", '{"id":true}'])
def test_user_ids_must_be_the_consoles_numeric_ids(user_data: str) -> None:
    with pytest.raises(pusher.PusherError):
        pusher.signed_user_id(user_data)


def test_api_signature_of_the_library_and_its_tampering() -> None:
    request = Request(
        LIBRARY._pusher_client,
        "POST",
        "/apps/1/events",
        {"name": "e", "channels": ["c"], "data": "d"},
    )
    query, body, now = dict(request.query_params), request.body, time.time()
    assert pusher.api_signature_ok(KEY, SECRET, "POST", "/apps/1/events", query, body, now) is None
    assert pusher.api_signature_ok(KEY, SECRET, "POST", "/apps/2/events", query, body, now)
    assert pusher.api_signature_ok(KEY, SECRET, "POST", "/apps/1/events", query, body + b" ", now)
    assert pusher.api_signature_ok(KEY, SECRET, "POST", "/apps/1/events", query, body, now + 601)
    assert pusher.api_signature_ok(KEY, "wrong", "POST", "/apps/1/events", query, body, now)


def _library_query(path: str = "/apps/1/events") -> tuple[dict[str, str], bytes]:
    request = Request(LIBRARY._pusher_client, "POST", path, {"name": "e", "channels": ["c"]})
    return dict(request.query_params), request.body


_SIG = "auth_signature"
QUERY_CASES: list[tuple[str, dict[str, str | None], str | None]] = [
    ("the library's own", {}, None),
    ("another key", {"auth_key": "other"}, "unknown auth_key"),
    ("no key", {"auth_key": None}, "unknown auth_key"),
    ("auth_version 2", {"auth_version": "2.0"}, "unsupported auth_version"),
    ("no timestamp", {"auth_timestamp": None}, "auth_timestamp missing or not an integer"),
    ("a word", {"auth_timestamp": "now"}, "auth_timestamp missing or not an integer"),
    ("601 s old", {"auth_timestamp": "-601"}, "auth_timestamp more than 600 s off"),
    ("601 s ahead", {"auth_timestamp": "+601"}, "auth_timestamp more than 600 s off"),
    ("no signature", {_SIG: None}, "auth_signature missing or not 64 hex digits"),
    ("an empty signature", {_SIG: ""}, "auth_signature missing or not 64 hex digits"),
    ("63 hex digits", {_SIG: "a" * 63}, "auth_signature missing or not 64 hex digits"),
    ("upper-case hex", {_SIG: "A" * 64}, "auth_signature missing or not 64 hex digits"),
    ("not hex", {_SIG: "g" * 64}, "auth_signature missing or not 64 hex digits"),
    ("a well-shaped wrong one", {_SIG: "0" * 64}, "bad auth_signature"),
    ("a bad body_md5 shape", {"body_md5": "x"}, "body_md5 is not 32 hex digits"),
    ("another body's md5", {"body_md5": "0" * 32}, "bad auth_signature"),
    ("an extra parameter", {"info": "user_count"}, "bad auth_signature"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "change", "reason"), QUERY_CASES, ids=[c[0] for c in QUERY_CASES])
def test_api_query_is_decided_before_the_body(
    case: str, change: dict[str, str | None], reason: str | None
) -> None:
    """Everything but body_md5's match is decided on the query alone (no body is passed)."""
    query, _ = _library_query()
    now = time.time()
    for name, value in change.items():
        if value is None:
            query.pop(name, None)
        elif name == "auth_timestamp" and value[0] in "+-":
            query[name] = str(int(query[name]) + int(value))
        else:
            query[name] = value
    assert pusher.api_query_refusal(KEY, SECRET, "POST", "/apps/1/events", query, now) == reason


def test_api_body_must_match_the_signed_md5() -> None:
    query, body = _library_query()
    assert pusher.api_body_refusal(query, body) is None
    assert pusher.api_body_refusal(query, body + b" ") == "body_md5 does not match the body"
    assert pusher.api_body_refusal({}, body) == "body_md5 does not match the body"
    assert pusher.api_body_refusal({}, b"") is None  # a bodiless POST signs no body_md5


def test_events_bodies() -> None:
    event = pusher.parse_events(b'{"name":"e","channels":["a","private-b"],"data":"x"}')[0]
    assert event.channels == ("a", "private-b") and event.socket_id is None
    for body, status in [
        (b"{", 400),
        (b'{"name":"e","channels":[],"data":"x"}', 400),
        (b'{"name":"e","channels":["a b"],"data":"x"}', 400),
        (b'{"name":"e","channels":["a"],"data":1}', 400),
        (b'{"name":"e","channels":["a"],"data":"x","socket_id":"nope"}', 400),
        (b'{"name":"e","channels":["a","opspush.run.1"],"data":"x"}', 403),
        (json.dumps({"name": "e", "channels": ["a"], "data": "é" * 5121}).encode(), 413),
    ]:
        with pytest.raises(pusher.PusherError) as refused:
            pusher.parse_events(body)
        assert refused.value.status == status, body
    batch = [{"channel": "a", "name": "e", "data": "x"}] * 11
    with pytest.raises(pusher.PusherError):
        pusher.parse_batch(json.dumps({"batch": batch}).encode())


@pytest.mark.parametrize(
    ("channel", "status"),
    [("#server-to-user-7", None), ("#server-to-user-9223372036854775807", None),
     ("#server-to-user-0", 400), ("#server-to-user-007", 400), ("#server-to-user-x", 400),
     ("#server-to-user--1", 400), ("#server-to-user-", 400), ("#server-to-user-7.0", 400),
     ("#server-to-user-9223372036854775808", 400), ("#server-to-user-" + "9" * 300, 400),
     ("#other-7", 400), ("#server-to-user-\u0667", 400)],
)  # fmt: skip
def test_events_to_a_user(channel: str, status: int | None) -> None:
    """Pusher's `send_to_user`: `#server-to-user-<id>` for a user opspush can sign in."""
    body = json.dumps({"name": "e", "channels": [channel, "a"], "data": "x"}).encode()
    if status is None:
        assert pusher.parse_events(body)[0].channels == (channel, "a")
        assert pusher.user_channel(channel) == int(channel.rpartition("-")[2])
        return
    assert pusher.user_channel(channel) is None
    with pytest.raises(pusher.PusherError) as refused:
        pusher.parse_events(body)
    assert refused.value.status == status


def test_engine_frames_in_pushers_words() -> None:
    state = '{"type":"state","ch":"run:4","data":{"id":4},"interval":5}'
    frame = json.loads(pusher.translate(state))
    assert frame["event"] == "opspush.state" and frame["channel"] == "private-opspush.run.4"
    assert json.loads(frame["data"]) == {"data": {"id": 4}, "interval": 5}
    end = json.loads(pusher.translate('{"type":"end","ch":"run:4","reason":"revoked"}'))
    assert (end["event"], json.loads(end["data"])) == ("opspush.end", {"reason": "revoked"})
    error = '{"type":"error","ch":"run:4","code":"forbidden","message":"no"}'
    assert json.loads(pusher.translate(error))["data"]["status"] == 403


@pytest.mark.parametrize(
    ("ch", "data", "interval"),
    [
        ("run:4", {"id": 4}, 5),
        ("run:12", {"id": 12, "summary_counts": {"processed": 5}, "progress": 0.00005}, 10),
        ("review-pack:7", {"tenant": {"name": 'a "quoted", data: name'}, "pack": None}, None),
        ("wall:3", {"workspace_id": 3, "runs": [{"id": 1, "note": "interval"}]}, 1),
        ("run:9", {"text": ',"interval":99}', "é": "€"}, None),
    ],
)
def test_a_state_sliced_into_pushers_words_is_the_parsed_translation(
    ch: str, data: dict[str, object], interval: int | None
) -> None:
    """The sliced fast path says exactly what parsing the frame would."""
    state = protocol.state_frame(ch, protocol.encode(data), interval)
    frame = json.loads(pusher.translate(state))
    kind, _, ref = ch.partition(":")
    assert frame["event"] == "opspush.state" and frame["channel"] == f"private-opspush.{kind}.{ref}"
    assert json.loads(frame["data"]) == {"data": data, "interval": interval}


def test_relay_chunks_reassemble_in_any_interleaving() -> None:
    big = {"t": "events", "d": "é€" * 4000}  # 20,000 bytes, cut inside no character
    small = {"t": "terminate", "user": 3}
    a, b = chunks(big), chunks(small)
    assert len(a) == 3 and len(b) == 1
    assert all(len(p.encode()) <= CHUNK < 8000 for p in a)
    assert len(set(a)) == len(a)  # numbered: PostgreSQL folds identical payloads
    reassembler = Reassembler()
    out = [reassembler.feed(p) for p in (a[2], b[0], a[0], a[1])]
    assert out == [None, small, None, big]
    assert reassembler.feed("garbage") is None and reassembler.dropped == 1


def test_abandoned_chunks_are_dropped() -> None:
    reassembler = Reassembler()
    first = chunks({"d": "x" * 20000})[0]
    assert reassembler.feed(first, now=0.0) is None
    assert reassembler.feed(chunks({"d": "y" * 20000})[0], now=100.0) is None
    assert reassembler.dropped == 1


def _app(key: str = "k", secret: str = "s" * 16) -> dict[str, str]:
    return {
        "OPSPUSH_PUSHER_APP_ID": "1",
        "OPSPUSH_PUSHER_KEY": key,
        "OPSPUSH_PUSHER_SECRET": secret,
    }


@pytest.mark.parametrize(
    ("env", "error"),
    [
        ({}, None),
        ({"OPSPUSH_PUSHER_APP_ID": "1", "OPSPUSH_PUSHER_KEY": "k"}, "OPSPUSH_PUSHER_SECRET"),
        (_app(key="k/"), "KEY"),
        (_app(secret="short"), "16"),
        (_app(), None),
    ],
)  # fmt: skip
def test_pusher_settings(env: dict[str, str], error: str | None) -> None:
    env = {"OPSPUSH_SECRET": "x" * 32, **env}
    if error is None:
        settings = Settings.from_env(env)
        assert (settings.pusher is None) == (len(env) == 1)
        assert "s" * 16 not in repr(settings)  # the secret never reaches a log line
    else:
        with pytest.raises(ConfigError, match=error):
            Settings.from_env(env)
