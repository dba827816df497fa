"""A load client process: many viewers, on /ws (push), on the Pusher endpoint (the same
viewers as Echo connects them: signed private channels), or polling the HTTP API.

The WebSocket side is a minimal RFC 6455 client on asyncio.Protocol (no task, no parser
generator per frame), so one process holds thousands of sockets on a fraction of a core.
Each viewer records `(seq, arrival)` for every state it receives; at the end, joined with
the writer's log of `(channel, seq, commit_time)`, every committed change a viewer should
have seen gives one latency sample: the arrival of the first state holding it (or newer).

Commands on stdin: `stop T0 T1` (the measurement window, epoch seconds) ends the run; the
process writes its samples to `--out` and prints one JSON summary line.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import random
import struct
import sys
import time
from array import array
from typing import Any

from bench.common import PUSHER_PATH, SECRET, pusher_subscribe, run_process

ZERO_MASK = b"\x00\x00\x00\x00"  # a legal mask key; masking with it leaves the payload as is


def text_frame(payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", 0x81, 0x80 | n)
    elif n < 65536:
        header = struct.pack("!BBH", 0x81, 0x80 | 126, n)
    else:
        header = struct.pack("!BBQ", 0x81, 0x80 | 127, n)
    return header + ZERO_MASK + payload


def control_frame(opcode: int, payload: bytes) -> bytes:
    return struct.pack("!BB", 0x80 | opcode, 0x80 | len(payload)) + ZERO_MASK + payload


class Segment:
    """One subscription's observations: the channel and (seq, arrival) pairs."""

    __slots__ = ("arrivals", "ch", "seqs")

    def __init__(self, ch: str) -> None:
        self.ch = ch
        self.seqs: list[int] = []
        self.arrivals: list[float] = []


def seq_of(ch: str, data: dict[str, Any]) -> int | None:
    if ch.startswith("run:"):
        return data.get("summary_counts", {}).get("processed")
    pack = data.get("pack") or {}
    return (pack.get("summary") or {}).get("seq")


class Stats:
    def __init__(self) -> None:
        self.segments: list[Segment] = []
        self.states = 0
        self.errors: dict[str, int] = {}
        self.closes: dict[str, int] = {}
        self.requests = array("d")  # when each HTTP answer arrived
        self.failures = 0


class WSProtocol(asyncio.Protocol):
    """One WebSocket: handshake, then frames; server frames are never masked."""

    def __init__(self, viewer: Viewer, hello: bytes, subscribe: bytes, path: str = "/ws") -> None:
        self.viewer = viewer
        self.hello = hello
        self.subscribe = subscribe  # empty on the Pusher endpoint: sent once the socket id is known
        self.path = path
        self.buffer = bytearray()
        self.upgraded = False
        self.transport: asyncio.Transport | None = None
        self.done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.close_code = 1006
        self.arrival = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        key = base64.b64encode(os.urandom(16)).decode()
        self.transport.write(
            (
                f"GET {self.path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )

    def data_received(self, data: bytes) -> None:
        # When the bytes arrived: this process parsing other frames first is not the server's.
        self.arrival = time.time()
        buf = self.buffer
        buf += data
        if not self.upgraded:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            if not buf.startswith(b"HTTP/1.1 101"):
                self.finish(int(buf[9:12] or b"0") or 1006)
                return
            del buf[: end + 4]
            self.upgraded = True
            assert self.transport is not None
            if self.subscribe:
                self.transport.write(text_frame(self.hello) + text_frame(self.subscribe))
        while len(buf) >= 2:
            b0, b1 = buf[0], buf[1]
            n = b1 & 0x7F
            pos = 2
            if n == 126:
                if len(buf) < 4:
                    return
                n = struct.unpack_from("!H", buf, 2)[0]
                pos = 4
            elif n == 127:
                if len(buf) < 10:
                    return
                n = struct.unpack_from("!Q", buf, 2)[0]
                pos = 10
            if len(buf) < pos + n:
                return
            payload = bytes(buf[pos : pos + n])
            del buf[: pos + n]
            opcode = b0 & 0x0F
            if opcode == 1:
                self.viewer.on_text(payload, self)
            elif opcode == 9:
                assert self.transport is not None
                self.transport.write(control_frame(10, payload))
            elif opcode == 8:
                code = struct.unpack_from("!H", payload)[0] if len(payload) >= 2 else 1005
                self.close_code = code
                assert self.transport is not None
                self.transport.write(control_frame(8, payload[:2]))
                self.transport.close()
                self.finish(code)
                return

    def connection_lost(self, exc: Exception | None) -> None:
        self.finish(self.close_code)

    def finish(self, code: int) -> None:
        if not self.done.done():
            self.done.set_result(code)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


class Viewer:
    """One browser tab: one socket (push) or one poller, watching one thing at a time."""

    def __init__(self, client: Client, index: int, user: int, kind: str, ref: int) -> None:
        self.client = client
        self.index = index
        self.user = user
        self.kind = kind  # "run" (ref = slot) or "pack" (ref = tenant id)
        self.ref = ref
        self.segment: Segment | None = None
        self.ready = asyncio.get_running_loop().create_future()
        self.ended = False
        self.last_seq: int | None = None
        self.interval: float | None = None  # polling: the interval of the last answer
        self.source = f"127.0.0.{2 + index % 200}"

    def channel(self) -> str | None:
        if self.kind == "pack":
            return f"review-pack:{self.ref}"
        run = self.client.slot_run(self.ref)
        return None if run is None else f"run:{run}"

    def observe(self, seq: int | None, arrival: float | None = None) -> None:
        if self.segment is None or seq is None:
            return
        if self.segment.seqs and seq <= self.segment.seqs[-1]:
            return  # an unchanged counter (a state for another reason)
        self.segment.seqs.append(seq)
        self.segment.arrivals.append(arrival or time.time())
        self.client.stats.states += 1
        if not self.ready.done():
            self.ready.set_result(None)

    def on_text(self, payload: bytes, proto: WSProtocol) -> None:
        frame = json.loads(payload)
        if "event" in frame:
            self.on_pusher(frame, proto)
            return
        kind = frame.get("type")
        if kind == "state":
            self.observe(seq_of(frame["ch"], frame["data"]), proto.arrival)
        elif kind == "end":
            self.ended = True
        elif kind == "error":
            code = frame.get("code", "?")
            self.client.stats.errors[code] = self.client.stats.errors.get(code, 0) + 1

    def on_pusher(self, frame: dict[str, Any], proto: WSProtocol) -> None:
        """The Pusher endpoint: subscribe once connected, as Echo does with a signed channel."""
        event = frame["event"]
        assert proto.transport is not None
        if event == "opspush.state":
            assert self.segment is not None
            self.observe(seq_of(self.segment.ch, json.loads(frame["data"])["data"]), proto.arrival)
        elif event == "opspush.end":
            # Echo would stay connected and subscribe to the next run; leaving the socket
            # keeps this the same cycle as /ws's close 4000.
            self.ended = True
            proto.finish(4000)
        elif event == "pusher:connection_established":
            socket_id = json.loads(frame["data"])["socket_id"]
            assert self.segment is not None
            subscribe = pusher_subscribe(socket_id, self.segment.ch)
            proto.transport.write(text_frame(subscribe))
        elif event == "pusher:ping":
            proto.transport.write(text_frame(b'{"event":"pusher:pong","data":{}}'))
        elif event in ("pusher:subscription_error", "pusher:error"):
            code = f"{event}:{frame['data']}"[:80]
            self.client.stats.errors[code] = self.client.stats.errors.get(code, 0) + 1

    def start_segment(self, ch: str) -> None:
        self.segment = Segment(ch)
        self.client.stats.segments.append(self.segment)

    async def next_channel(self, old: str | None) -> str:
        while True:
            ch = self.channel()
            if ch is not None and ch != old:
                return ch
            await asyncio.sleep(0.2)
            self.client.reload_slots()

    async def run_push(self) -> None:
        loop = asyncio.get_running_loop()
        client = self.client
        hello = json.dumps({"op": "hello", "token": client.token(self.user)}).encode()
        pusher = client.mode == "pusher"
        path = PUSHER_PATH if pusher else "/ws"
        ch: str | None = self.channel()
        backoff = 0.5
        while True:
            if ch is None:
                ch = await self.next_channel(None)
            sub = b"" if pusher else json.dumps({"op": "subscribe", "ch": ch}).encode()
            self.ended = False
            self.start_segment(ch)
            async with client.connecting:
                try:
                    _, proto = await loop.create_connection(
                        lambda: WSProtocol(self, hello, sub, path),  # noqa: B023
                        "127.0.0.1",
                        client.port,
                        local_addr=(self.source, 0),
                    )
                except OSError:
                    client.stats.failures += 1
                    await asyncio.sleep(backoff)
                    backoff = min(10.0, backoff * 2)
                    continue
            client.sockets.add(proto)
            try:
                code = await proto.done
            finally:
                client.sockets.discard(proto)
            key = str(code)
            client.stats.closes[key] = client.stats.closes.get(key, 0) + 1
            if code == 4000 or self.ended:
                backoff = 0.5
                ch = await self.next_channel(ch)  # the run ended: the user opens the next one
            else:
                await asyncio.sleep(backoff * (1 + random.random()))
                backoff = min(10.0, backoff * 2)

    async def run_poll(self) -> None:
        client = self.client
        auth = f"Authorization: Bearer {client.token(self.user)}\r\n"
        ch: str | None = self.channel()
        reader: asyncio.StreamReader | None = None
        writer: asyncio.StreamWriter | None = None
        last_used = 0.0
        await asyncio.sleep(random.uniform(0, client.stagger))
        while True:
            if ch is None:
                ch = await self.next_channel(None)
                self.segment = None
            if self.segment is None or self.segment.ch != ch:
                self.start_segment(ch)
            kind, ref = ch.split(":")
            path = f"/api/runs/{ref}" if kind == "run" else f"/api/tenants/{ref}/review-pack"
            request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}\r\n".encode()
            began = time.monotonic()
            try:
                # uvicorn drops idle keep-alive connections after 5 s: reuse only fresh ones.
                if writer is None or began - last_used > 4.0:
                    if writer is not None:
                        writer.close()
                    async with client.connecting:
                        reader, writer = await asyncio.open_connection(
                            "127.0.0.1", client.port, local_addr=(self.source, 0)
                        )
                assert reader is not None
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                status = int(head[9:12])
                length = 0
                for line in head.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                body = await reader.readexactly(length)
                last_used = time.monotonic()
                client.stats.requests.append(time.time())
            except (OSError, asyncio.IncompleteReadError, ValueError):
                client.stats.failures += 1
                if writer is not None:
                    writer.close()
                writer = None
                await asyncio.sleep(0.5)
                continue
            if status != 200:
                key = str(status)
                client.stats.errors[key] = client.stats.errors.get(key, 0) + 1
                await asyncio.sleep(10)
                continue
            answer = json.loads(body)
            self.observe(seq_of(ch, answer["data"]))
            interval = answer["interval"]
            self.interval = interval
            if interval is None:  # terminal: the page stops polling; the user opens the next
                ch = await self.next_channel(ch)
                continue
            # setInterval: a fixed cadence, whatever the request took.
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - began)))


class Client:
    def __init__(self, args: argparse.Namespace, plan: dict[str, Any]) -> None:
        self.args = args
        self.port = plan["port"]
        self.mode = plan["mode"]
        self.slots_path = plan["slots"]
        self.stagger = plan.get("stagger", 5.0)
        self.slots: dict[int, int] = {}
        self.slots_loaded = 0.0
        self.tokens: dict[int, str] = {}
        self.stats = Stats()
        self.sockets: set[WSProtocol] = set()
        self.connecting = asyncio.Semaphore(args.concurrency)
        self.reload_slots(force=True)

    def reload_slots(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.slots_loaded < 0.2:
            return
        self.slots_loaded = now
        try:
            with open(self.slots_path) as handle:
                self.slots = {int(k): v for k, v in json.load(handle).items()}
        except (OSError, ValueError):
            pass

    def slot_run(self, slot: int) -> int | None:
        return self.slots.get(slot)

    def token(self, user: int) -> str:
        if user not in self.tokens:
            from opspush.core.auth import mint_token

            self.tokens[user] = mint_token(user, SECRET, ttl=6 * 3600)
        return self.tokens[user]


def latencies(stats: Stats, writes_path: str, t0: float, t1: float) -> tuple[array, int]:
    """One sample per (viewer, committed change in [t0, t1]); and the changes never seen."""
    wanted = {seg.ch for seg in stats.segments}
    commits: dict[str, dict[int, float]] = {}
    with open(writes_path) as handle:
        for line in handle:
            ch, seq, ts = line.split()
            if ch in wanted:
                t = float(ts)
                if t0 <= t <= t1:
                    commits.setdefault(ch, {})[int(seq)] = t
    samples = array("d")
    missed = 0
    for seg in stats.segments:
        table = commits.get(seg.ch)
        if not table or not seg.seqs:
            continue
        prev = seg.seqs[0]  # the state at subscribe time: not a change this viewer waited for
        for seq, arrival in zip(seg.seqs[1:], seg.arrivals[1:], strict=True):
            for s in range(prev + 1, seq + 1):
                t = table.get(s)
                if t is not None:
                    samples.append(max(0.0, arrival - t))
            prev = seq
        missed += sum(1 for s in table if s > prev)
    return samples, missed


async def main_async(args: argparse.Namespace) -> None:
    with open(args.plan) as handle:  # noqa: ASYNC230  # a harness, not the server
        plan = json.load(handle)
    client = Client(args, plan)
    viewers = [
        Viewer(client, i, user, kind, ref)
        for i, (user, kind, ref) in enumerate(plan["viewers"])
        if i % args.of == args.index
    ]
    tasks = [
        asyncio.create_task(v.run_push() if plan["mode"] != "poll" else v.run_poll())
        for v in viewers
    ]
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)

    async def announce_ready() -> None:
        pending = [v.ready for v in viewers]
        try:
            async with asyncio.timeout(plan.get("ready_timeout", 180)):
                await asyncio.gather(*pending)
        except TimeoutError:
            pass
        ready = sum(1 for v in viewers if v.ready.done())
        print(json.dumps({"ready": ready, "viewers": len(viewers)}), flush=True)

    announcer = asyncio.create_task(announce_ready())
    while True:
        line = (await stdin.readline()).decode().split()
        if not line:
            return
        if line[0] == "stop":
            t0, t1 = float(line[1]), float(line[2])
            break
    announcer.cancel()
    open_sockets = len(client.sockets)
    for task in tasks:
        task.cancel()
    for proto in list(client.sockets):
        proto.abort()
    await asyncio.gather(*tasks, return_exceptions=True)
    samples, missed = latencies(client.stats, plan["writes"], t0, t1)
    in_window = sum(
        1 for seg in client.stats.segments for arrival in seg.arrivals if t0 <= arrival <= t1
    )
    with open(args.out, "wb") as handle:  # noqa: ASYNC230  # a harness, not the server
        samples.tofile(handle)
    s = client.stats
    print(
        json.dumps(
            {
                "samples": len(samples),
                "missed": missed,
                "states": in_window,
                "requests": sum(1 for t in s.requests if t0 <= t <= t1),
                "failures": s.failures,
                "errors": s.errors,
                "closes": s.closes,
                "open_sockets": open_sockets,
                # What the viewers ask for at the interval rules, whether served or not.
                "offered_per_s": sum(1.0 / v.interval for v in viewers if v.interval),
            }
        ),
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--plan", required=True)
    parser.add_argument("--index", type=int, default=0)
    parser.add_argument("--of", type=int, default=1)
    parser.add_argument("--out", required=True)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--cpus", default="")
    args = parser.parse_args()
    run_process(main_async(args), args.cpus)


if __name__ == "__main__":
    main()
