"""The floor: a bare `websockets` server doing the sends opspush does, and nothing else.

Each connection sends its two opening frames (hello, subscribe) as an opspush viewer does,
is answered with one frame, and is then held idle in the set of its channel's viewers. On
`go N INTERVAL` (stdin) the server sends N bursts, INTERVAL seconds apart: in each, every
channel's viewers get one frame with the library's own `broadcast()`. The frame is the
template from `--frame` with `{run}` replaced by the channel's run and `{seq}` by a counter,
so every broadcast is a new text of the same size as opspush's state frame.

Usage: python -m bench.floor_server --port P --frame FILE [--cpus 0]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from websockets.asyncio.server import ServerConnection, broadcast, serve

from bench.common import run_process


async def main_async(port: int, template: str) -> None:
    held: dict[str, set[ServerConnection]] = {}  # by run id

    async def handler(connection: ServerConnection) -> None:
        await connection.recv()  # hello
        run = json.loads(await connection.recv())["ch"].removeprefix("run:")
        await connection.send('{"type":"welcome"}')
        viewers = held.setdefault(run, set())
        viewers.add(connection)
        try:
            await connection.wait_closed()
        finally:
            viewers.discard(connection)

    async def broadcast_series(count: int, interval: float) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        for seq in range(1, count + 1):
            for run, viewers in held.items():
                broadcast(viewers, template.replace("{run}", run).replace("{seq}", str(seq)))
            await asyncio.sleep(max(0.0, start + seq * interval - loop.time()))
        print("done", flush=True)

    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    # Same limits as opspush: no compression, its frame size cap, its keepalive pings.
    async with serve(
        handler,
        "127.0.0.1",
        port,
        compression=None,
        max_size=64 * 1024,
        ping_interval=20,
        ping_timeout=20,
        backlog=4096,
    ):
        print("ready", flush=True)
        series: asyncio.Task[None] | None = None
        while line := (await stdin.readline()).decode().split():
            if line[0] == "go":
                series = asyncio.create_task(broadcast_series(int(line[1]), float(line[2])))
            elif line[0] == "count":
                print(sum(map(len, held.values())), flush=True)
        if series is not None:
            series.cancel()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--frame", required=True, help="a file holding the frame template")
    parser.add_argument("--cpus", default="0")
    args = parser.parse_args()
    run_process(main_async(args.port, Path(args.frame).read_text()), args.cpus)
    return 0


if __name__ == "__main__":
    sys.exit(main())
