"""Running the real Laravel Echo (tests/js, installed by scripts/test) under Node."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

JS = Path(__file__).resolve().parent / "js"
NODE = shutil.which("node")


def require_echo() -> str:
    """The node binary, or skip with the reason (scripts/test installs both on CI)."""
    if NODE is None:
        pytest.skip("node is not installed (Node 20 and npm; .ci/run installs them)")
    if not (JS / "node_modules" / "laravel-echo").is_dir():
        pytest.skip("tests/js/node_modules is missing: run scripts/test (npm ci)")
    return NODE


class EchoProcess:
    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.lines: list[dict[str, Any]] = []

    async def next(self, timeout: float = 15.0) -> dict[str, Any]:
        assert self.process.stdout is not None
        async with asyncio.timeout(timeout):
            raw = await self.process.stdout.readline()
        if not raw:
            raise EOFError("the Echo process ended")
        line: dict[str, Any] = json.loads(raw)
        self.lines.append(line)
        return line

    async def command(self, value: dict[str, Any]) -> None:
        """One line on the script's stdin (a whisper to send)."""
        assert self.process.stdin is not None
        self.process.stdin.write((json.dumps(value) + "\n").encode())
        await self.process.stdin.drain()

    async def until(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 15.0
    ) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                line = await self.next(timeout)
                if predicate(line):
                    return line


@contextlib.asynccontextmanager
async def echo_listener(config: dict[str, Any]) -> AsyncIterator[EchoProcess]:
    node = require_echo()
    process = await asyncio.create_subprocess_exec(
        node,
        str(JS / "echo_listener.mjs"),
        json.dumps(config),
        cwd=JS,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        yield EchoProcess(process)
    finally:
        if process.returncode is None:
            assert process.stdin is not None
            process.stdin.close()
            try:
                async with asyncio.timeout(5):
                    await process.wait()
            except TimeoutError:
                process.kill()
                await process.wait()
