"""Start `opspush serve` for the benchmark: own CPU, enough file descriptors, same code path.

Usage: python -m bench.serve --cpus 0 --port 8765 [--workers N]   (settings: the environment;
BENCH_PROFILE=FILE writes the server's cProfile stats there when it stops)
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time

from bench.common import parse_cpus, pin, raise_fd_limit


def _log_gc() -> None:
    """Print every collection of the oldest generation that takes more than 20 ms."""
    started: list[float] = []

    def callback(phase: str, info: dict[str, int]) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            started[:] = [time.perf_counter()]
        elif started:
            ms = (time.perf_counter() - started[0]) * 1000
            if ms > 20:
                print(f"gc gen2 {ms:.0f} ms, {info['collected']} collected", file=sys.stderr)

    gc.callbacks.append(callback)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cpus", default="0")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    raise_fd_limit()
    pin(parse_cpus(args.cpus))
    if os.environ.get("BENCH_GC_LOG"):
        _log_gc()
    from opspush.commands.cli import main as opspush

    argv = ["serve", "--host", "127.0.0.1", "--port", str(args.port)]
    if args.workers > 1:
        argv += ["--workers", str(args.workers)]
    profile_to = os.environ.get("BENCH_PROFILE")  # a file: the server's cProfile stats
    if not profile_to:
        return opspush(argv)
    import cProfile

    profiler = cProfile.Profile()
    try:
        return profiler.runcall(opspush, argv)
    finally:
        profiler.dump_stats(profile_to)


if __name__ == "__main__":
    sys.exit(main())
