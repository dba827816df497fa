"""Load for the floor comparison: idle viewers of one channel that count the frames they get.

Each socket sends hello and `subscribe run:ID` (the same two frames to opspush and to the
bare server), then only reads. Prints `{"ready": n}` once every socket has had `--expect`
frames (welcome, or welcome and first state); on `count` (stdin) prints the text frames
received so far, on `stop` closes everything.

Usage: python -m bench.floor_client --port P --viewers N --run ID --user U [--index I --of K]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from bench.client import WSProtocol
from bench.common import SECRET, run_process


class Counter:
    """What `WSProtocol` calls for each text frame: a count, and readiness."""

    def __init__(self, expect: int, all_ready: asyncio.Event, tally: list[int]) -> None:
        self.expect = expect
        self.all_ready = all_ready
        self.tally = tally  # [frames, sockets ready, sockets wanted]
        self.seen = 0

    def on_text(self, payload: bytes, proto: WSProtocol) -> None:
        self.tally[0] += 1
        self.seen += 1
        if self.seen == self.expect:
            self.tally[1] += 1
            if self.tally[1] == self.tally[2]:
                self.all_ready.set()


async def main_async(args: argparse.Namespace) -> None:
    from opspush.core.auth import mint_token

    loop = asyncio.get_running_loop()
    hello = json.dumps({"op": "hello", "token": mint_token(args.user, SECRET, ttl=3600)})
    subscribe = json.dumps({"op": "subscribe", "ch": f"run:{args.run}"})
    mine = [i for i in range(args.viewers) if i % args.of == args.index]
    all_ready = asyncio.Event()
    tally = [0, 0, len(mine)]
    protocols: list[WSProtocol] = []
    # Spread over loopback addresses: one source address has ~28,000 ephemeral ports.
    for n, i in enumerate(mine):
        source = f"127.0.{1 + i // 20000}.{1 + (i // 250) % 250}"
        counter = Counter(args.expect, all_ready, tally)
        _, proto = await loop.create_connection(
            lambda c=counter: WSProtocol(c, hello.encode(), subscribe.encode()),  # type: ignore[arg-type]
            "127.0.0.1",
            args.port,
            local_addr=(source, 0),
        )
        protocols.append(proto)
        if n % 200 == 199:
            await asyncio.sleep(0.01)  # a ramp, not a SYN flood against the backlog
    try:
        async with asyncio.timeout(args.ready_timeout):
            await all_ready.wait()
    except TimeoutError:
        pass
    print(json.dumps({"ready": tally[1], "viewers": len(mine)}), flush=True)
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    while line := (await stdin.readline()).decode().split():
        if line[0] == "count":
            closed = sum(1 for p in protocols if p.done.done())
            print(json.dumps({"frames": tally[0], "closed": closed}), flush=True)
        elif line[0] == "stop":
            break
    for proto in protocols:
        proto.abort()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--viewers", type=int, required=True)
    parser.add_argument("--run", type=int, required=True)
    parser.add_argument("--user", type=int, required=True)
    parser.add_argument("--expect", type=int, default=2, help="frames before a socket is ready")
    parser.add_argument("--index", type=int, default=0)
    parser.add_argument("--of", type=int, default=1)
    parser.add_argument("--cpus", default="1")
    parser.add_argument("--ready-timeout", type=float, default=120.0)
    args: Any = parser.parse_args()
    run_process(main_async(args), args.cpus)


if __name__ == "__main__":
    main()
