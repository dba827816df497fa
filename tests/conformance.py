"""RFC 6455 conformance: the Autobahn test suite's fuzzing client against the WebSocket stack.

The app is `create_app` with the service's default settings, run by the same uvicorn
configuration (`uvicorn_config`) as `opspush serve`; the only addition is an echo endpoint,
`/echo`, mounted by this test-only code and never by the service: an echo on
`connection.FrameConnection`, the frame layer that serves both `/ws` and the Pusher
endpoint (the service has no other WebSocket stack).

Run by scripts/conformance:

    python -m tests.conformance --wstest 'python2.7 …/wstest' [--cases 1.* 2.*] [--exclude 9.*]
        [--max-frame-bytes N] [--summary F]

Exits 1 unless every case is OK, NON-STRICT or INFORMATIONAL. The compression cases (12.*,
13.*) are always left out: permessage-deflate is off (the frame layer offers no extension).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import shutil
import sys
import tempfile
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import uvicorn

from opspush.app import create_app
from opspush.commands.runner import uvicorn_config
from opspush.config import Settings
from opspush.web.connection import FrameConnection, FrameLimits
from tests.conftest import free_socket

PASSING = {"OK", "NON-STRICT", "INFORMATIONAL"}
AGENTS = {"opspush-ws": "/echo"}
OUT_OF_SCOPE = ["12.*", "13.*"]  # permessage-deflate: compression is off


class EchoConnection(FrameConnection):
    """Every message back, on the same frame layer as `/ws`."""

    def received(self, data: bytes, text: str | None) -> None:
        if text is None:
            self.send_binary(data)
        else:
            self.send_text(text)


def echo_connection(settings: Settings) -> Any:
    def create(config: Any, server_state: Any, app_state: Any) -> EchoConnection:
        return EchoConnection(
            server_state,
            max_size=settings.max_frame_bytes,
            ping_interval=settings.ping_interval,
            limits=FrameLimits(
                settings.frame_rate, settings.frame_burst, settings.max_fragments, 4429
            ),
        )

    return create


@asynccontextmanager
async def database() -> AsyncIterator[str]:
    url = os.environ.get("DATABASE_URL")
    if url:
        yield url
        return
    from opspush.database import embedded

    folder = tempfile.mkdtemp(prefix="opspush-conformance-pg-")
    server = embedded.start(os.path.join(folder, "data"), delete_on_stop=True)
    try:
        yield server.dsn
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


@asynccontextmanager
async def serving(dsn: str, args: argparse.Namespace) -> AsyncIterator[int]:
    settings = Settings(
        secret="conformance-" + "x" * 32,
        log_level="warning",
        max_frame_bytes=args.max_frame_bytes,
    )
    if args.no_frame_limits:
        # 9.* sends 1,000 messages back to back and messages of 65,536 fragments: past
        # the per-socket frame limits, which are policy, not protocol.
        settings = replace(settings, frame_rate=0, max_fragments=10_000_000)
    sock = free_socket()
    config = uvicorn_config(
        create_app(settings, dsn), settings, {"/echo": echo_connection(settings)}
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        async with asyncio.timeout(30):
            while not server.started:
                if task.done():
                    task.result()
                await asyncio.sleep(0.05)
        yield int(sock.getsockname()[1])
    finally:
        server.should_exit = True
        await task
        sock.close()


async def fuzz(
    wstest: list[str], port: int, cases: list[str], exclude: list[str], outdir: Path
) -> dict[str, Any]:
    spec = {
        "outdir": str(outdir),
        "servers": [
            {"agent": agent, "url": f"ws://127.0.0.1:{port}{path}"}
            for agent, path in AGENTS.items()
        ],
        "cases": cases,
        "exclude-cases": OUT_OF_SCOPE + exclude,
        "exclude-agent-cases": {},
    }
    spec_file = outdir / "fuzzingclient.json"
    spec_file.write_text(json.dumps(spec))
    process = await asyncio.create_subprocess_exec(
        *wstest, "--mode", "fuzzingclient", "--spec", str(spec_file),
        stdout=asyncio.subprocess.DEVNULL, cwd=outdir,
    )  # fmt: skip
    if await process.wait() != 0:
        raise SystemExit(f"wstest exited with {process.returncode}")
    index = json.loads((outdir / "index.json").read_text())
    return {agent: index.get(agent, {}) for agent in AGENTS}


def _case_key(case: str) -> tuple[int, ...]:
    return tuple(int(part) for part in case.split("."))


def summary(by_agent: dict[str, Any], args: argparse.Namespace) -> str:
    return "\n\n".join(
        f"### `{AGENTS[agent]}` ({agent})\n\n{agent_summary(results, args)}"
        for agent, results in by_agent.items()
    )


def agent_summary(results: dict[str, Any], args: argparse.Namespace) -> str:
    """One agent's summary as Markdown: counts by section and behaviour, and every case
    that is not plain OK."""
    by_section: dict[str, Counter[str]] = {}
    for case, result in results.items():
        by_section.setdefault(case.split(".")[0], Counter())[result["behavior"]] += 1
    behaviours = sorted({b for counts in by_section.values() for b in counts})
    total = Counter(result["behavior"] for result in results.values())
    lines = [
        "| section | cases | " + " | ".join(behaviours) + " |",
        "| --- | ---: | " + " | ".join("---:" for _ in behaviours) + " |",
    ]
    for section in sorted(by_section, key=int):
        counts = by_section[section]
        cells = " | ".join(str(counts.get(b, 0)) for b in behaviours)
        lines.append(f"| {section} | {sum(counts.values())} | {cells} |")
    cells = " | ".join(f"**{total.get(b, 0)}**" for b in behaviours)
    lines.append(f"| all | **{len(results)}** | {cells} |")
    notable = [
        f"- {case}: {result['behavior']} (close: {result['behaviorClose']})"
        for case, result in sorted(results.items(), key=lambda item: _case_key(item[0]))
        if result["behavior"] != "OK" or result["behaviorClose"] not in ("OK", "INFORMATIONAL")
    ]
    return "\n".join(
        [
            f"Cases {' '.join(args.cases)}, excluded {' '.join(OUT_OF_SCOPE + args.exclude)}; "
            f"frames up to {args.max_frame_bytes} bytes"
            + ("; frame rate and fragment limits lifted." if args.no_frame_limits else "."),
            "",
            *lines,
            "",
            "Cases not plain OK:" if notable else "Every case OK.",
            *notable,
        ]
    )


async def collect(args: argparse.Namespace, outdir: Path) -> dict[str, Any]:
    async with database() as dsn, serving(dsn, args) as port:
        return await fuzz(shlex.split(args.wstest), port, args.cases, args.exclude, outdir)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wstest", required=True, help="the command that runs wstest")
    parser.add_argument("--cases", nargs="+", default=["*"])
    parser.add_argument("--exclude", nargs="*", default=[])
    parser.add_argument("--max-frame-bytes", type=int, default=Settings(secret="").max_frame_bytes)
    parser.add_argument(
        "--no-frame-limits",
        action="store_true",
        help="lift the frame rate and fragment limits (OPSPUSH_FRAME_RATE=0)",
    )
    parser.add_argument("--summary", help="write the Markdown summary to this file")
    parser.add_argument("--reports", help="keep the HTML/JSON reports in this folder")
    args = parser.parse_args()
    outdir = Path(args.reports or tempfile.mkdtemp(prefix="opspush-autobahn-"))
    outdir.mkdir(parents=True, exist_ok=True)
    by_agent = asyncio.run(collect(args, outdir))
    text = summary(by_agent, args)
    print(text)
    if args.summary:
        Path(args.summary).write_text(text + "\n")
    status = 0
    for agent, results in by_agent.items():
        failed = [case for case, r in results.items() if r["behavior"] not in PASSING]
        failed += [case for case, r in results.items() if r["behaviorClose"] not in PASSING]
        if not results or failed:
            print(f"conformance: {agent} FAILED {sorted(set(failed), key=_case_key)}")
            status = 1
        else:
            print(
                f"conformance: {agent}: {len(results)} cases, all OK, NON-STRICT or INFORMATIONAL"
            )
    return status


if __name__ == "__main__":
    sys.exit(main())
