"""The attacker of `bench.attacks`: one hostile client, in its own process, for a bounded time.

    python -m bench.attack_client --attack NAME --port P --seconds N [--token T] [--key K]

Prints `ready` once its set-up is done (the upgrade, the hello) and the attack begins, then,
when the attack has run `--seconds` (or the server ended it), one JSON line: what it sent,
what it received, and whether and when the server closed it (`closed_at`, seconds after
`ready`; `close`: the close code, the HTTP status, or how the connection ended). Every loop
is bounded by the deadline; every socket is closed before it exits. Raw sockets on asyncio
(uvloop), a minimal RFC 6455 client: the frames are built by hand because the attacks are
frames a library would refuse to send.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import json
import os
import socket
import sys
import time
from collections import Counter
from typing import Any

from bench.common import parse_cpus, pin, raise_fd_limit, use_uvloop

MASK = bytes.fromhex("37fa213d")  # any key will do; the payloads are masked with it
CHUNK = 64 * 1024  # bytes per write of every flood
TEXT, CONT, CLOSE, PING, PONG = 0x1, 0x0, 0x8, 0x9, 0xA
ATTACKS = (
    "cont-flood-ws",
    "cont-flood-pusher",
    "ping-flood-unread-ws",
    "ping-pong-flood-ws",
    "head-flood",
    "head-url-flood",
    "body-hold",
    "dup-origin",
)


def frame(opcode: int, payload: bytes = b"", *, fin: bool = True) -> bytes:
    """One masked client frame (payloads up to 64 KiB)."""
    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([0x80 | n])
    else:
        head += bytes([0x80 | 126]) + n.to_bytes(2, "big")
    masked = bytes(b ^ MASK[i % 4] for i, b in enumerate(payload))
    return head + MASK + masked


def repeated(unit: bytes, size: int = CHUNK) -> bytes:
    return unit * max(1, size // len(unit))


class Frames:
    """Server frames (unmasked) as they arrive: counted by opcode; the close code kept."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.counts: Counter[int] = Counter()
        self.bytes = 0
        self.close_code: int | None = None
        self.texts: list[bytes] = []  # the first few text frames (the welcome)

    def feed(self, data: bytes) -> None:
        self.bytes += len(data)
        buf = self.buffer
        buf += data
        pos, end = 0, len(buf)
        while end - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            length, head = b1 & 0x7F, 2
            if length == 126:
                if end - pos < 4:
                    break
                length, head = int.from_bytes(buf[pos + 2 : pos + 4], "big"), 4
            elif length == 127:
                if end - pos < 10:
                    break
                length, head = int.from_bytes(buf[pos + 2 : pos + 10], "big"), 10
            if end - pos < head + length:
                break
            opcode = b0 & 0x0F
            self.counts[opcode] += 1
            if opcode == CLOSE and self.close_code is None:
                payload = bytes(buf[pos + head : pos + head + length])
                self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
            elif opcode == TEXT and len(self.texts) < 4:
                self.texts.append(bytes(buf[pos + head : pos + head + length]))
            pos += head + length
        del buf[:pos]


class Outcome:
    """What one attack saw; printed as JSON at the end."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.closed_at: float | None = None
        self.close: str | None = None
        self.sent = 0
        self.units = 0  # frames or requests or connections, per attack
        self.extra: dict[str, Any] = {}

    def closed(self, how: str) -> None:
        if self.closed_at is None:
            self.closed_at = round(time.monotonic() - self.started, 3)
            self.close = how

    def as_dict(self) -> dict[str, Any]:
        return {
            "closed_at": self.closed_at,
            "close": self.close,
            "sent_bytes": self.sent,
            "units": self.units,
            **self.extra,
        }


ATTACKER_ADDRESS = "127.0.0.2"


def ready() -> None:
    print("ready", flush=True)


async def connect(port: int, rcvbuf: int | None = None, timeout: float = 5.0) -> Any:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    # The attacker is a client of its own: another loopback address than the witness's and
    # the probes', so the per-address limits count it apart, as they would on a network.
    sock.bind((ATTACKER_ADDRESS, 0))
    sock.setblocking(False)
    try:
        await asyncio.wait_for(
            asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port)), timeout
        )
    except BaseException:
        sock.close()
        raise
    return await asyncio.open_connection(sock=sock, limit=2**20)


def upgrade_request(port: int, path: str, extra: str = "") -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        f"{extra}\r\n"
    ).encode()


async def upgrade(port: int, path: str, rcvbuf: int | None = None) -> tuple[Any, Any, bytes]:
    """A correct opening handshake; returns the streams and what came after the head."""
    reader, writer = await connect(port, rcvbuf)
    writer.write(upgrade_request(port, path))
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    status = head.split(b"\r\n", 1)[0].decode("latin-1")
    if " 101 " not in status + " ":
        writer.close()
        raise RuntimeError(f"the upgrade was refused: {status}")
    return reader, writer, b""


async def hello(reader: Any, writer: Any, token: str, frames: Frames) -> None:
    writer.write(frame(TEXT, json.dumps({"op": "hello", "token": token}).encode()))
    deadline = time.monotonic() + 10
    while not frames.texts:
        if time.monotonic() > deadline:
            raise RuntimeError("no welcome")
        data = await asyncio.wait_for(reader.read(65536), 10)
        if not data:
            raise RuntimeError("closed before the welcome")
        frames.feed(data)
    if b'"welcome"' not in frames.texts[0]:
        raise RuntimeError(f"no welcome: {frames.texts[0][:200]!r}")


async def read_frames(reader: Any, frames: Frames, outcome: Outcome) -> None:
    """Read and parse until EOF; a close frame or the end of the stream is the server's close."""
    try:
        while True:
            data = await reader.read(262144)
            if not data:
                outcome.closed(f"close {frames.close_code}" if frames.close_code else "EOF")
                return
            frames.feed(data)
            if frames.close_code is not None:
                outcome.closed(f"close {frames.close_code}")
    except (ConnectionError, OSError) as error:
        outcome.closed(f"close {frames.close_code}" if frames.close_code else type(error).__name__)


async def flood(writer: Any, chunk: bytes, outcome: Outcome, frames_per_chunk: int) -> None:
    """Write `chunk` as fast as the socket takes it, until cancelled or the server closes."""
    try:
        while outcome.closed_at is None and not writer.is_closing():
            writer.write(chunk)
            await writer.drain()
            outcome.sent += len(chunk)
            outcome.units += frames_per_chunk
    except (ConnectionError, OSError) as error:
        outcome.closed(type(error).__name__)


async def bounded(deadline: float, *aws: Any) -> None:
    """Run these until the first ends or the deadline passes; cancel the rest."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(
            tasks, timeout=max(0.0, deadline - time.monotonic()), return_when="FIRST_COMPLETED"
        )
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def close_writer(writer: Any) -> None:
    with contextlib.suppress(Exception):
        writer.transport.abort()


# -- the attacks ----------------------------------------------------------------------------


MAX_CONNECTIONS = 1000  # one attacker's reconnections, at most, in one attack


class Attack:
    """One attack by one client that reconnects whenever the server closes it, until its
    time is up: the server's first close (when, how), every close, the totals."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.total = Outcome()
        self.deadline: float | None = None
        self.connections = 0
        self.closes: Counter[str] = Counter()
        self.setup_failures: Counter[str] = Counter()
        self.received = 0

    def begin(self) -> None:
        """The first connection is set up: the attack (and its clock) starts."""
        if self.deadline is None:
            ready()
            self.total.started = time.monotonic()
            self.deadline = self.total.started + self.seconds

    def ended(self, connection: Outcome, frames: Frames | None = None) -> None:
        self.total.sent += connection.sent
        self.total.units += connection.units
        if frames is not None:
            self.received += frames.bytes
        if connection.close is not None:
            self.closes[connection.close] += 1
            self.total.closed(connection.close)

    async def run(self, once: Any) -> Outcome:
        while self.connections < MAX_CONNECTIONS:
            if self.deadline is not None and time.monotonic() >= self.deadline:
                break
            self.connections += 1
            try:
                if self.deadline is None:
                    await once(self)
                else:
                    async with asyncio.timeout(self.deadline - time.monotonic() + 1.5):
                        await once(self)
            except (OSError, RuntimeError, TimeoutError, asyncio.IncompleteReadError) as error:
                if self.deadline is None:
                    raise  # the first set-up failed: no attack
                if time.monotonic() >= self.deadline:
                    break
                self.setup_failures[str(error)[:80] or type(error).__name__] += 1
                await asyncio.sleep(0.1)
        self.total.extra.update(
            connections=self.connections,
            closes=dict(self.closes),
            received_bytes=self.received,
        )
        if self.setup_failures:
            self.total.extra["reconnect_failures"] = dict(self.setup_failures)
        return self.total


async def final_close(reader: Any, frames: Frames, connection: Outcome) -> None:
    """Closed while writing: a close frame may already be in the receive buffer."""
    if connection.closed_at is not None and frames.close_code is None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(read_frames(reader, frames, Outcome()), 0.5)
        if frames.close_code is not None:
            connection.close = f"close {frames.close_code} ({connection.close})"


async def cont_flood(args: argparse.Namespace, path: str) -> Outcome:
    """No token: TEXT FIN=0 with no payload, then empty CONT frames with FIN=0, endlessly."""
    unit = frame(CONT, b"", fin=False)
    chunk = repeated(unit)

    async def once(attack: Attack) -> None:
        reader, writer, _ = await upgrade(args.port, path)
        attack.begin()
        assert attack.deadline is not None
        frames, connection = Frames(), Outcome()
        try:
            writer.write(frame(TEXT, b"", fin=False))
            await bounded(
                attack.deadline,
                flood(writer, chunk, connection, len(chunk) // len(unit)),
                read_frames(reader, frames, connection),
            )
            await final_close(reader, frames, connection)
        finally:
            close_writer(writer)
            attack.ended(connection, frames)

    return await Attack(args.seconds).run(once)


PING_PAYLOAD = b"p" * 125


async def ping_flood(args: argparse.Namespace, *, read: bool) -> Outcome:
    """With a token: pings of 125 bytes as fast as possible; with `read`, one unsolicited pong
    per 64 KB and every frame read back; without, a small receive buffer never read (at the
    end, one read of at most 1 s looks for a close frame)."""
    ping = frame(PING, PING_PAYLOAD)
    chunk = repeated(ping)
    n = len(chunk) // len(ping)
    if read:
        chunk += frame(PONG, b"u" * 125)
    pongs = [0]
    read_after = [0]

    async def once(attack: Attack) -> None:
        reader, writer, _ = await upgrade(args.port, "/ws", rcvbuf=None if read else 4096)
        frames, connection = Frames(), Outcome()
        try:
            await hello(reader, writer, args.token, frames)
            attack.begin()
            assert attack.deadline is not None
            if read:
                await bounded(
                    attack.deadline,
                    flood(writer, chunk, connection, n),
                    read_frames(reader, frames, connection),
                )
                await final_close(reader, frames, connection)
            else:
                await bounded(attack.deadline, flood(writer, chunk, connection, n))
                during = frames.bytes
                tail = Outcome()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(read_frames(reader, frames, tail), 1.0)
                read_after[0] += frames.bytes - during
                if frames.close_code is not None:
                    connection.close = f"close {frames.close_code}" + (
                        f" ({connection.close})" if connection.close else " (seen at the end)"
                    )
        finally:
            close_writer(writer)
            pongs[0] += frames.counts.get(PONG, 0)
            attack.ended(connection, frames)

    outcome = await Attack(args.seconds).run(once)
    outcome.extra["pings"] = outcome.units
    outcome.extra["pongs_read"] = pongs[0]
    if not read:
        outcome.extra["read_after_the_attack_bytes"] = read_after[0]
    return outcome


async def read_http(reader: Any, outcome: Outcome, statuses: Counter[str] | None = None) -> None:
    """The response's status (if any), then until the server closes."""
    try:
        line = await reader.readline()
        if not line:
            outcome.closed("EOF, no response")
            return
        status = line.decode("latin-1").split(" ", 2)
        code = status[1] if len(status) > 1 else line[:40].decode("latin-1")
        if statuses is not None:
            statuses[code] += 1
        outcome.closed(f"HTTP {code}")
        while await reader.read(65536):
            pass
    except (ConnectionError, OSError, asyncio.LimitOverrunError, ValueError) as error:
        outcome.closed(type(error).__name__)


async def head_flood(args: argparse.Namespace, *, url: bool) -> Outcome:
    """A request head that never ends: one header value (or the URL), 64 KiB per write."""
    chunk = b"a" * CHUNK

    async def once(attack: Attack) -> None:
        reader, writer = await connect(args.port)
        attack.begin()
        assert attack.deadline is not None
        connection = Outcome()
        try:
            writer.write(b"GET /" if url else b"GET / HTTP/1.1\r\nHost: x\r\nX-A: ")
            await bounded(
                attack.deadline, flood(writer, chunk, connection, 1), read_http(reader, connection)
            )
        finally:
            close_writer(writer)
            attack.ended(connection)

    outcome = await Attack(args.seconds).run(once)
    outcome.extra["sent_mb"] = round(outcome.sent / 2**20, 1)
    return outcome


async def body_hold(args: argparse.Namespace) -> Outcome:
    """Many connections, each a POST to the events API announcing a body that never comes."""
    outcome = Outcome()
    query = (
        f"auth_key={args.key}&auth_timestamp={int(time.time())}&auth_version=1.0"
        f"&body_md5={hashlib.md5(b'x' * 200000).hexdigest()}&auth_signature={'0' * 64}"
    )
    head = (
        f"POST /apps/{args.app_id}/events?{query} HTTP/1.1\r\nHost: 127.0.0.1:{args.port}\r\n"
        "Content-Type: application/json\r\nContent-Length: 200000\r\n\r\n"
    ).encode()
    statuses: Counter[str] = Counter()
    failures: Counter[str] = Counter()
    writers: list[Any] = []
    ready()
    outcome.started = time.monotonic()
    deadline = outcome.started + args.seconds

    connecting = asyncio.Semaphore(200)  # at most this many connects in flight
    ends: dict[str, list[float]] = {}  # how each connection the server ended ended: times

    async def one() -> None:
        async with connecting:
            if time.monotonic() > deadline:
                return
            try:
                reader, writer = await connect(args.port, timeout=2.0)
            except (OSError, TimeoutError) as error:
                failures[type(error).__name__] += 1
                return
            writers.append(writer)
            writer.write(head)
            outcome.units += 1
        mine = Outcome()
        await read_http(reader, mine, statuses)
        ends.setdefault(mine.close or "?", []).append(time.monotonic() - outcome.started)

    async def all_of_them() -> None:
        await asyncio.gather(*(one() for _ in range(args.connections)))
        await asyncio.sleep(max(0.0, deadline - time.monotonic()))  # hold until the end

    try:
        await bounded(deadline, all_of_them())
    finally:
        for writer in writers:
            close_writer(writer)
    closed = sum(len(times) for times in ends.values())
    if closed:
        outcome.closed_at = round(min(min(times) for times in ends.values()), 3)
        outcome.close = (
            ", ".join(
                f"{len(times)} {how} (from {min(times):.2f} s)"
                for how, times in sorted(ends.items())
            )
            + f"; {outcome.units - closed} of {outcome.units} held to the end"
        )
    outcome.extra.update(
        held_open=outcome.units - closed,
        connect_failures=dict(failures),
        statuses=dict(statuses),
    )
    return outcome


async def dup_origin(args: argparse.Namespace) -> Outcome:
    """Upgrades to /ws with the Origin header twice; the status of each answer."""
    outcome = Outcome()
    statuses: Counter[str] = Counter()
    failures: Counter[str] = Counter()
    origin = f"Origin: http://127.0.0.1:{args.port}\r\n"
    ready()
    outcome.started = time.monotonic()
    deadline = outcome.started + args.seconds
    count = iter(range(args.requests))

    async def worker() -> None:
        for _ in count:
            if time.monotonic() > deadline:
                return
            try:
                reader, writer = await connect(args.port, timeout=2.0)
            except (OSError, TimeoutError) as error:
                failures[type(error).__name__] += 1
                continue
            try:
                writer.write(upgrade_request(args.port, "/ws", origin + origin))
                line = await asyncio.wait_for(reader.readline(), 2.0)
                parts = line.decode("latin-1").split(" ", 2)
                statuses[parts[1] if len(parts) > 1 else "closed unanswered"] += 1
                outcome.units += 1
            except (OSError, TimeoutError) as error:
                failures[type(error).__name__] += 1
            finally:
                close_writer(writer)

    await bounded(deadline, asyncio.gather(*(worker() for _ in range(20))))
    outcome.extra.update(
        requests=outcome.units,
        seconds_taken=round(time.monotonic() - outcome.started, 2),
        statuses=dict(statuses),
        failures=dict(failures),
    )
    return outcome


async def run(args: argparse.Namespace) -> dict[str, Any]:
    name = args.attack
    if name == "cont-flood-ws":
        outcome = await cont_flood(args, "/ws")
    elif name == "cont-flood-pusher":
        outcome = await cont_flood(args, f"/app/{args.key}?protocol=7&client=js&version=8.4.0")
    elif name == "ping-flood-unread-ws":
        outcome = await ping_flood(args, read=False)
    elif name == "ping-pong-flood-ws":
        outcome = await ping_flood(args, read=True)
    elif name in ("head-flood", "head-url-flood"):
        outcome = await head_flood(args, url=name == "head-url-flood")
    elif name == "body-hold":
        outcome = await body_hold(args)
    elif name == "dup-origin":
        outcome = await dup_origin(args)
    else:
        raise SystemExit(f"unknown attack {name!r}")
    return outcome.as_dict()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.attack_client", description=__doc__)
    parser.add_argument("--attack", required=True, choices=ATTACKS)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--token", default="")
    parser.add_argument("--key", default="")
    parser.add_argument("--app-id", default="")
    parser.add_argument("--connections", type=int, default=2000, help="body-hold")
    parser.add_argument("--requests", type=int, default=2000, help="dup-origin")
    parser.add_argument("--cpus", default="any")
    args = parser.parse_args(argv)
    raise_fd_limit()
    pin(parse_cpus(args.cpus))
    use_uvloop()
    try:
        result = asyncio.run(run(args))
    except Exception as error:  # the harness reports it in the table
        result = {"error": repr(error)[:300]}
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
