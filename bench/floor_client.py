"""Load for the floor comparison: idle viewers of runs that count the frames they get.

Viewer i watches run i mod R of `--runs`. On `/ws` (`--endpoint opspush`) and on the bare
server (`websockets`) each socket sends hello and `subscribe run:ID` (the same two frames to
both); on the Pusher endpoint (`echo`) it waits for its socket id and subscribes to the
signed `private-opspush.run.ID`, as Laravel Echo does. Then it only reads. Prints
`{"ready": n}` once every socket has had its opening frames (the bare server's one answer;
welcome and first state; connection_established, subscription_succeeded and first state);
on `count` (stdin) prints the text frames received so far, on `stop` closes everything.

Usage: python -m bench.floor_client --port P --viewers N --runs ID,ID --user U
           [--endpoint opspush|echo|websockets] [--index I --of K]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from bench.client import WSProtocol, text_frame
from bench.common import PUSHER_PATH, SECRET, pusher_subscribe, run_process

OPENING_FRAMES = {"websockets": 1, "opspush": 2, "echo": 3}


class Counter:
    """What `WSProtocol` calls for each text frame: a count, and readiness."""

    def __init__(
        self, expect: int, all_ready: asyncio.Event, tally: list[int], pusher_ch: str | None
    ) -> None:
        self.expect = expect
        self.pusher_ch = pusher_ch  # on the Pusher endpoint: subscribe once connected
        self.all_ready = all_ready
        self.tally = tally  # [frames, sockets ready, sockets wanted]
        self.seen = 0

    def on_text(self, payload: bytes, proto: WSProtocol) -> None:
        self.tally[0] += 1
        self.seen += 1
        if self.seen == 1 and self.pusher_ch is not None and proto.transport is not None:
            socket_id = json.loads(json.loads(payload)["data"])["socket_id"]
            proto.transport.write(text_frame(pusher_subscribe(socket_id, self.pusher_ch)))
        if self.seen == self.expect:
            self.tally[1] += 1
            if self.tally[1] == self.tally[2]:
                self.all_ready.set()


async def main_async(args: argparse.Namespace) -> None:
    from opspush.core.auth import mint_token

    loop = asyncio.get_running_loop()
    hello = json.dumps({"op": "hello", "token": mint_token(args.user, SECRET, ttl=3600)})
    runs = [int(run) for run in args.runs.split(",")]
    pusher = args.endpoint == "echo"
    endpoint_path = PUSHER_PATH if pusher else "/ws"
    mine = [i for i in range(args.viewers) if i % args.of == args.index]
    all_ready = asyncio.Event()
    tally = [0, 0, len(mine)]
    protocols: list[WSProtocol] = []
    # Spread over loopback addresses: one source address has ~28,000 ephemeral ports.
    for n, i in enumerate(mine):
        source = f"127.0.{1 + i // 20000}.{1 + (i // 250) % 250}"
        ch = f"run:{runs[i % len(runs)]}"
        counter = Counter(OPENING_FRAMES[args.endpoint], all_ready, tally, ch if pusher else None)
        subscribe = b"" if pusher else json.dumps({"op": "subscribe", "ch": ch}).encode()
        _, proto = await loop.create_connection(
            lambda c=counter, s=subscribe: WSProtocol(c, hello.encode(), s, endpoint_path),  # type: ignore[misc]
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
    parser.add_argument("--runs", required=True, help="run ids, comma-separated")
    parser.add_argument("--user", type=int, required=True)
    parser.add_argument("--endpoint", choices=sorted(OPENING_FRAMES), default="opspush")
    parser.add_argument("--index", type=int, default=0)
    parser.add_argument("--of", type=int, default=1)
    parser.add_argument("--cpus", default="1")
    parser.add_argument("--ready-timeout", type=float, default=120.0)
    args: Any = parser.parse_args()
    run_process(main_async(args), args.cpus)


if __name__ == "__main__":
    main()
