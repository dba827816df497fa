"""Small helpers shared by the harness and its child processes."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import os
import resource
import socket
import time
from collections.abc import Coroutine
from typing import Any

WRITER_MARK = "/* bench-writer */"  # ends every writer statement, so they can be excluded
SECRET = "opspush-bench-secret-0123456789abcdef0123"
# The Pusher app of the `pusher` mode (OPSPUSH_PUSHER_*): the same viewers over /app/{key}.
PUSHER_APP_ID, PUSHER_KEY, PUSHER_SECRET = "bench", "bench-key", "bench-pusher-secret-0123456789"
PUSHER_PATH = f"/app/{PUSHER_KEY}?protocol=7&client=bench"


def pusher_subscribe(socket_id: str, ch: str) -> bytes:
    """`pusher:subscribe` to opspush's channel `ch` (`run:12`), signed as the host signs it."""
    kind, _, ref = ch.partition(":")
    channel = f"private-opspush.{kind}.{ref}"
    signature = hmac.new(
        PUSHER_SECRET.encode(), f"{socket_id}:{channel}".encode(), hashlib.sha256
    ).hexdigest()
    subscribe = {
        "event": "pusher:subscribe",
        "data": {"channel": channel, "auth": f"{PUSHER_KEY}:{signature}"},
    }
    return json.dumps(subscribe).encode()


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def raise_fd_limit(wanted: int = 65536) -> int:
    """Raise RLIMIT_NOFILE as far as allowed (root may raise the hard limit too)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), max(hard, wanted)))
        return wanted
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        return hard
    return soft


def pin(cpus: set[int] | None) -> None:
    """Pin this process (and what it starts later) to these CPUs, or to every CPU (None).

    Not intersected with the current affinity: a child inherits its parent's (the harness
    pins itself to the clients' CPU), and must be able to move away from it.
    """
    wanted = cpus or set(range(os.cpu_count() or 1))
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, wanted)


def parse_cpus(text: str) -> set[int] | None:
    text = text.strip()
    if not text or text == "any":
        return None
    return {int(part) for part in text.split(",") if part.strip()}


def use_uvloop() -> None:
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()


def run_process(main: Coroutine[Any, Any, Any], cpus: str) -> None:
    """A load or server process of the bench: every descriptor allowed, its CPUs, uvloop (the
    loop uvicorn picks for opspush), then `main`."""
    raise_fd_limit()
    pin(parse_cpus(cpus))
    use_uvloop()
    asyncio.run(main)
