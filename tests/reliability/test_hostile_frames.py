"""Hostile frames: the parser under hypothesis, then the live endpoint under the same input.

Every input gets an `error` frame or a close code from protocol.md; nothing reaches the
server log as an unhandled exception; another viewer sees no effect.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import string
import threading
from collections import Counter
from typing import Any

import pytest
import websockets
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from opspush.core import protocol
from opspush.core.channels import MAX_ID, Channel, ChannelError, Kind, parse_channel
from tests.conftest import running_server
from tests.factories import Factory
from tests.reliability.conftest import assert_no_leak, counts, watch_logs

ERROR_CODES = {
    "not_found",
    "forbidden",
    "bad_request",
    "unknown_channel",
    "too_many_subscriptions",
    "rate_limited",
}
PROTOCOL_CLOSES = {4000, 4401, 4408, 4429, 1009, 1012}
OPS = ["hello", "subscribe", "unsubscribe", "pause", "resume", "Subscribe", "", "ping", None, 1]

HOSTILE_CHANNELS = [
    "run:1 OR 1=1",
    "run:1; DROP TABLE operation_runs",
    "run:-1",
    "run:0",
    "run:+1",
    "run: 1",
    "run:1 ",
    "run:1.0",
    "run:1e3",
    "run:0x10",
    "run:99999999999999999999",
    f"run:{MAX_ID + 1}",
    "run:١٢",  # Arabic-Indic digits
    "run:１",  # fullwidth digit
    "run:",
    "review-pack:",
    "operations:",
    ":1",
    "run",
    "run:1:2",
    "RUN:1",
    "users:1",
    "tenants:1",
    "run:\u0000",
    "run:1\u0000",
    "run:\ud800",
    "\ud800",
    "\udfff:1",
    "run:" + "9" * 60,
    "run:" + "1" * 100,
    "x" * 70000,
]

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**200), max_value=2**200)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
channel_text = (
    st.sampled_from(HOSTILE_CHANNELS)
    | st.builds(
        lambda kind, rest: f"{kind}:{rest}",
        st.sampled_from(["run", "review-pack", "operations", "wall", "run "]),
        st.text(alphabet=string.digits + "-+ .e\u0660\uff11", max_size=25),
    )
    | st.text(max_size=70)
)
frame_objects = st.fixed_dictionaries(
    {"op": st.sampled_from(OPS) | json_values},
    optional={
        "ch": channel_text | json_values,
        "token": st.text(max_size=40) | json_values,
        "reason": st.sampled_from(["hidden", "modal", "", "HIDDEN"]) | json_values,
        "extra": json_values,
    },
)


def deep(depth: int, open_: str = "[", close: str = "]") -> str:
    return open_ * depth + close * depth


odd_texts = st.sampled_from(
    [
        "",
        " ",
        "null",
        "[]",
        "1e999999",
        "9" * 5000,  # longer than Python's int conversion limit
        "-" + "9" * 5000,
        '{"op": 1e999999}',
        '{"op": NaN}',
        '{"op": Infinity, "ch": -Infinity}',
        deep(100_000),
        deep(30_000, '{"a":', "}").replace("}", "}", 1) + "",
        '{"op":"subscribe","ch":"\\ud800"}',
        '{"op":"subscribe","ch":"run:\\udfff"}',
        '{"op":"\\ud800","ch":"\\udc00x"}',
        '{"op":"subscribe","ch":"run:1","op":"hello"}',
        '{"op":"subscribe","ch":["run:1"]}',
        '{"op":"subscribe","ch":{"$gt":""}}',
        '{"__proto__":{"op":"hello"}}',
        "\ufeff{}",
        '{"op":"pause","ch":null,"reason":null}',
        '{"op":"resume","ch":null}',
    ]
)
hostile_texts = (
    st.text(max_size=200)
    | odd_texts
    | frame_objects.map(lambda frame: json.dumps(frame, ensure_ascii=False))
    | frame_objects.map(json.dumps)
)


def check_error_frame(text: str) -> dict[str, Any]:
    """An error frame must be valid UTF-8 JSON that echoes nothing long."""
    text.encode("utf-8")  # a lone surrogate would make the socket fail
    frame = json.loads(text)
    assert frame["type"] == "error" and frame["code"] in ERROR_CODES, frame
    assert frame["ch"] is None or (isinstance(frame["ch"], str) and len(frame["ch"]) <= 64)
    return frame


PARSER_EXAMPLES = 200


@settings(max_examples=PARSER_EXAMPLES, deadline=None, derandomize=True, database=None)
@given(hostile_texts)
def test_parser_answers_every_text_with_a_command_or_a_protocol_error(text: str) -> None:
    try:
        command = protocol.parse_frame(text)
    except protocol.ProtocolError as error:
        assert error.code in ERROR_CODES
        check_error_frame(protocol.error_frame(error.ch, error.code, error.message))
    else:
        kinds = (protocol.Hello, protocol.Subscribe, protocol.Unsubscribe, protocol.Pause)
        assert isinstance(command, (*kinds, protocol.Resume))
        channel = getattr(command, "channel", None)
        assert channel is None or 1 <= channel.id <= MAX_ID


def test_parser_record(record: Any) -> None:
    """The row for the property test above (hypothesis runs it PARSER_EXAMPLES times)."""
    for text in HOSTILE_CHANNELS:
        try:
            parse_channel(text)
        except ChannelError as error:
            assert error.code in ("bad_request", "unknown_channel")
        else:  # only canonical decimal ids in range are channels
            raise AssertionError(f"{text!r} parsed as a channel")
    record(
        "hostile",
        "frame parser: random JSON, wrong types, huge numbers, deep nesting, odd unicode "
        "(hypothesis)",
        PARSER_EXAMPLES,
        "a command or a protocol error code; every error frame is valid UTF-8 JSON",
    )
    record(
        "hostile",
        "channel names: `run:1 OR 1=1`, `run:-1`, `run:99999999999999999999`, `review-pack:`, "
        "unknown kinds, Unicode digits, NUL, lone surrogates",
        len(HOSTILE_CHANNELS),
        "`bad_request` or `unknown_channel`; only canonical ids 1..2^63-1 parse",
    )


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(
    st.lists(
        st.tuples(st.floats(min_value=0, max_value=2, allow_nan=False), st.booleans()),
        max_size=300,
    ),
    st.floats(min_value=0.5, max_value=50),
    st.integers(min_value=1, max_value=200),
)
def test_rate_limiter_never_allows_more_than_burst_plus_rate(
    steps: list[tuple[float, bool]], rate: float, burst: int
) -> None:
    now = 1000.0
    limiter = protocol.RateLimiter(rate, burst, now)
    start, allowed = now, 0
    for step, _ in steps:
        now += step / 100
        if limiter.allow(now):
            allowed += 1
        assert allowed <= burst + rate * (now - start) + 1e-6


# -- the live endpoint ---------------------------------------------------------------------


ENDPOINT_EXAMPLES = 150
frame_batches = st.lists(
    hostile_texts.map(lambda text: ("text", text))
    | st.binary(max_size=64).map(lambda data: ("bytes", data)),
    min_size=1,
    max_size=6,
)


class ClientThread:
    """Hypothesis drives a client from its own thread and loop; the server stays on ours."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Any, timeout: float = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


MAX_FRAME = 64 * 1024  # the server's default OPSPUSH_MAX_FRAME_BYTES


async def fuzz_one(url: str, token: str, batch: list[tuple[str, Any]]) -> set[str]:
    """Send a batch then a probe; return what came back: error codes and close codes."""
    seen: set[str] = set()
    oversized = False
    async with websockets.connect(url, max_size=2**24) as ws:
        await ws.send(json.dumps({"op": "hello", "token": token}))
        assert json.loads(await ws.recv())["type"] == "welcome"
        try:
            for _kind, payload in batch:
                if isinstance(payload, str):
                    try:
                        oversized |= len(payload.encode()) > MAX_FRAME
                    except UnicodeEncodeError:  # lone surrogates: an invalid UTF-8 text frame
                        await ws.send(payload.encode("utf-8", "surrogatepass"), text=True)
                        continue
                else:
                    oversized |= len(payload) > MAX_FRAME
                await ws.send(payload)
            # The probe is answered at once; a refusal comes after a read of its channel (as
            # for one that does not exist), and the engine answers subscriptions of a kind in
            # the order they arrived: a last subscribe to a missing run is answered after
            # every run subscribe of the batch. Its own answer is not an outcome.
            await ws.send('{"op":"probe"}')
            sentinel, probed = f"run:{MAX_ID}", False
            while True:
                async with asyncio.timeout(10):
                    text = await ws.recv()
                assert isinstance(text, str)
                frame = json.loads(text)
                if frame["type"] != "error":
                    raise AssertionError(f"unexpected frame for a user with no access: {frame}")
                check_error_frame(text)
                if not probed and text == protocol.error_frame(None, "bad_request", "unknown `op`"):
                    probed = True  # the probe's answer (or an identical one): the socket is fine
                    await ws.send(json.dumps({"op": "subscribe", "ch": sentinel}))
                    continue
                if probed and (frame["ch"] == sentinel or frame["code"] == "rate_limited"):
                    break
                seen.add(frame["code"])
        except websockets.ConnectionClosed:
            code = ws.close_code
            if code in (None, 1006) and oversized:
                # The server closed with 1009 while we were still sending: TCP resets the
                # connection, and the reset can overtake the close frame on its way to us.
                code = 1009
            assert code in PROTOCOL_CLOSES, f"close code {code} is not in protocol.md"
            seen.add(f"close {code}")
    return seen


async def test_endpoint_survives_hostile_frames(
    database_dsn: str, db: Factory, record: Any
) -> None:
    workspace = await db.workspace()
    owner = await db.user(workspace, "owner")
    outsider = await db.user()  # no membership: every subscribe must say not_found
    run_id = await db.run(workspace, status="running")
    async with running_server(database_dsn) as server:
        sentinel = await server.connect(owner)
        first = await sentinel.subscribe(f"run:{run_id}")
        assert first["type"] == "state"
        before = counts(server)
        client = ClientThread()
        outcomes: set[str] = set()
        tries = 0
        with watch_logs() as logs:

            @settings(
                max_examples=ENDPOINT_EXAMPLES,
                deadline=None,
                derandomize=True,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            @given(frame_batches)
            @example([("text", json.dumps({"op": "subscribe", "ch": f"run:{run_id}"}))])
            @example([("text", json.dumps({"op": "subscribe", "ch": f"operations:{workspace}"}))])
            def fuzz(batch: list[tuple[str, Any]]) -> None:
                nonlocal tries
                tries += 1
                outcomes.update(client.run(fuzz_one(server.ws_url, server.token(outsider), batch)))

            try:
                await asyncio.to_thread(fuzz)
            finally:
                await asyncio.to_thread(client.stop)
            # The sentinel still works: a change reaches it.
            await db.update_run(run_id, summary_counts={"total": 10, "processed": 3})
            changed = await sentinel.until(lambda f: f.get("data", {}).get("progress") == 0.3)
            assert changed["type"] == "state"
            logs.assert_clean()
        await sentinel.close()
        await assert_no_leak(server, before)
    assert outcomes <= ERROR_CODES | {f"close {code}" for code in PROTOCOL_CLOSES}
    assert "not_found" in outcomes and "bad_request" in outcomes
    record(
        "hostile",
        "live `/ws`: batches of random text, JSON and binary frames (hypothesis), "
        "from a user with no access",
        tries,
        "error frames `bad_request`/`unknown_channel`/`not_found` only, never a state; "
        "no ERROR log; another viewer unaffected; no leak",
    )


async def test_oversized_binary_and_invalid_frames(
    database_dsn: str, db: Factory, record: Any
) -> None:
    user = await db.user()
    async with running_server(database_dsn, max_frame_bytes=4096) as server:
        with watch_logs() as logs:
            results = []
            # A text frame over the limit.
            viewer = await server.connect(user)
            await viewer.send("x" * 5000)
            results.append(await viewer.closed())
            # A binary frame over the limit.
            viewer = await server.connect(user)
            await viewer.connection.send(b"\x00" * 5000)
            results.append(await viewer.closed())
            # A binary frame under the limit: an error, the socket stays open.
            viewer = await server.connect(user)
            await viewer.connection.send(b"\x81\x00{}")
            error = await viewer.recv()
            assert error["code"] == "bad_request"
            await viewer.close()
            # Binary or oversized instead of hello.
            for payload in (b'{"op":"hello"}', "y" * 5000):
                ws = await websockets.connect(server.ws_url)
                await ws.send(payload)
                with pytest.raises(websockets.ConnectionClosed):
                    await asyncio.wait_for(ws.recv(), 10)
                results.append(ws.close_code)
            logs.assert_clean()
    assert results == [1009, 1009, 4401, 1009], results
    record(
        "hostile",
        "frames over the size limit (text and binary), binary frames, binary hello",
        5,
        "1009 over the limit; `bad_request` for a small binary frame; 4401 for a binary hello",
    )


async def test_hello_twice_and_subscribe_flood(database_dsn: str, db: Factory, record: Any) -> None:
    workspace = await db.workspace()
    user = await db.user(workspace, "owner")
    runs = [await db.run(workspace, status="running") for _ in range(3)]
    async with running_server(database_dsn, max_subscriptions=5) as server:
        other = await server.connect(user)
        assert (await other.subscribe(f"run:{runs[0]}"))["type"] == "state"
        before = counts(server)
        with watch_logs() as logs:
            viewer = await server.connect(user)
            await viewer.send({"op": "hello", "token": server.token(user)})
            again = await viewer.recv()
            assert again["type"] == "error" and again["code"] == "bad_request"
            # More subscriptions than allowed: too_many_subscriptions.
            for index in range(8):
                await viewer.send({"op": "subscribe", "ch": f"operations:{10**9 + index}"})
            codes = [(await viewer.until(lambda f: f["type"] == "error"))["code"] for _ in range(8)]
            assert codes.count("too_many_subscriptions") == 3 and codes.count("not_found") == 5
            # A flood far past the rate limit: rate_limited errors, then 4429.
            flood = 0
            try:
                while flood < 2000:
                    await viewer.send({"op": "subscribe", "ch": f"run:{runs[1]}"})
                    flood += 1
            except websockets.ConnectionClosed:
                pass
            code = await viewer.closed()
            assert code == protocol.CLOSE_TOO_MANY
            # The other viewer still gets changes.
            await db.update_run(runs[0], summary_counts={"total": 4, "processed": 1})
            state = await other.until(lambda f: f.get("data", {}).get("progress") == 0.25)
            assert state["ch"] == f"run:{runs[0]}"
            logs.assert_clean()
        await other.close()
        await assert_no_leak(server, before)
    record("hostile", "hello sent twice", 1, "`bad_request` error, socket stays open")
    record(
        "hostile",
        "subscriptions past the per-socket limit",
        8,
        "`too_many_subscriptions` past the limit, `not_found` before it",
    )
    record(
        "hostile",
        "subscribe flood past the rate limit (up to 2000 frames)",
        1,
        "`rate_limited` errors, then close 4429; other viewers unaffected; no leak",
    )


async def test_binary_frame_flood_is_rate_limited(
    database_dsn: str, db: Factory, record: Any
) -> None:
    """Binary frames count toward the rate limit like text ones (the review's finding 3)."""
    workspace = await db.workspace()
    user = await db.user(workspace, "owner")
    run = await db.run(workspace, status="running")
    async with running_server(database_dsn) as server:
        other = await server.connect(user)
        assert (await other.subscribe(f"run:{run}"))["type"] == "state"
        before = counts(server)
        with watch_logs() as logs:
            viewer = await server.connect(user)
            sent = 0
            with contextlib.suppress(websockets.ConnectionClosed):
                while sent < 2500:
                    await viewer.connection.send(b"\x00")
                    sent += 1
            answers: Counter[str] = Counter()
            with contextlib.suppress(websockets.ConnectionClosed):
                while True:
                    answers[(await viewer.recv())["code"]] += 1
            assert viewer.connection.close_code == protocol.CLOSE_TOO_MANY
            assert set(answers) == {"bad_request", "rate_limited"}, answers
            # Past the burst every frame is refused: no more than burst + a refill of them
            # were answered `bad_request`; the rest of the flood never reached the parser.
            burst = server.settings.rate_burst
            assert answers["bad_request"] < sent and answers["rate_limited"] >= burst, answers
            print(f"binary flood: {sent} sent, {dict(answers)}, close 4429")
            await db.update_run(run, summary_counts={"total": 4, "processed": 1})
            state = await other.until(lambda f: f.get("data", {}).get("progress") == 0.25)
            assert state["ch"] == f"run:{run}"
            logs.assert_clean()
        await other.close()
        await assert_no_leak(server, before)
    record(
        "hostile",
        "binary frame flood: 2,500 one-byte binary frames as fast as they go",
        1,
        "`bad_request` up to the burst, then `rate_limited` errors, then close 4429 (binary "
        "frames count like text); other viewers unaffected; no leak",
    )


def test_channel_ids_round_trip() -> None:
    assert parse_channel(f"run:{MAX_ID}") == Channel(Kind.RUN, MAX_ID)
