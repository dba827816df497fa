"""Start `opspush serve` for the benchmark: own CPU, enough file descriptors, same code path.

Usage: python -m bench.serve --cpus 0 --port 8765   (settings come from the environment)
"""

from __future__ import annotations

import argparse
import sys

from bench.common import parse_cpus, pin, raise_fd_limit


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cpus", default="0")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    raise_fd_limit()
    pin(parse_cpus(args.cpus))
    from server.cli import main as opspush

    return opspush(["serve", "--host", "127.0.0.1", "--port", str(args.port)])


if __name__ == "__main__":
    sys.exit(main())
