"""Floods below the message layer: frames that are no message, request heads and bodies
that never end, connections by the thousand. One client must never stall the others.

What another viewer waits meanwhile is measured by `python -m bench.attacks` (timings are
not asserted here): these tests hold that each flood is cut short, that the server stops
reading what the flooder sends, and that the other viewer keeps getting its changes.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from opspush.web.deadline import MAX_HEAD_BYTES, H11Guarded, HttpToolsGuarded
from tests.conftest import RunningServer, running_server
from tests.factories import Factory
from tests.pusher_support import APP
from tests.rawsocket import CONT, PING, PONG, TEXT, RawSocket, client_frame
from tests.reliability.conftest import counts, server_sockets, wait_until, watch_logs
from tests.test_processes import opspush_process

ENDPOINTS = {"/ws": ("/ws", 4429), "Pusher": (f"/app/{APP.key}?protocol=7", 4100)}


async def witness(server: RunningServer, db: Factory) -> tuple[Any, int]:
    """Another viewer, watching a run in flight: it must keep getting its changes."""
    workspace = await db.workspace()
    user = await db.user()
    await db.member(workspace, user, "operator")
    run = await db.run(workspace, status="running", summary_counts={"processed": 0})
    viewer = await server.connect(user)
    first = await viewer.subscribe(f"run:{run}")
    assert first["type"] == "state", first
    return viewer, run


async def still_served(server: RunningServer, db: Factory, viewer: Any, run: int, n: int) -> None:
    await db.update_run(run, summary_counts={"processed": n})
    await viewer.until(
        lambda f: f.get("type") == "state" and f["data"]["summary_counts"].get("processed") == n
    )


@pytest.mark.parametrize("endpoint", ENDPOINTS)
async def test_empty_frame_floods(
    database_dsn: str, db: Factory, record: Any, endpoint: str
) -> None:
    path, flood_code = ENDPOINTS[endpoint]
    async with running_server(database_dsn, pusher=APP, notify=True) as server:
        viewer, run = await witness(server, db)
        before = counts(server)
        with watch_logs() as logs:
            codes = {}
            for name, flood in {
                "empty continuation frames": (
                    client_frame(TEXT, fin=False) + client_frame(CONT, fin=False) * 5_000
                ),
                "empty pings": client_frame(PING) * 5_000,
                "unsolicited pongs": client_frame(PONG, b"x" * 125) * 5_000,
            }.items():
                attacker = await RawSocket.upgrade(server.port, path)
                assert attacker.status == 101
                await attacker.send(flood)  # no token: nothing but frames
                codes[name] = await attacker.close_code()
                # It stopped reading: the connection is gone, not waiting for a close.
                assert await attacker.recv() is None
                await attacker.aclose()
            await still_served(server, db, viewer, run, 1)
            await wait_until(lambda: server_sockets(server) <= before.server_sockets, 10)
            logs.assert_clean()
    # The continuation frames meet the fragment limit first.
    assert codes == {**dict.fromkeys(codes, flood_code), "empty continuation frames": 1009}
    record(
        "hostile",
        f"{endpoint}: 5,000 empty continuation frames, pings or unsolicited pongs in one "
        "write, with no token",
        len(codes),
        f"closed with 1009 at the 128th fragment, {flood_code} once past the frame burst "
        "(`OPSPUSH_FRAME_BURST`: every frame counts); the rest unread; another viewer kept "
        "getting changes",
    )


@pytest.mark.parametrize("endpoint", ENDPOINTS)
async def test_sustained_continuation_flood(
    database_dsn: str, db: Factory, record: Any, endpoint: str
) -> None:
    path, _ = ENDPOINTS[endpoint]
    async with running_server(database_dsn, pusher=APP, notify=True) as server:
        viewer, run = await witness(server, db)
        attacker = await RawSocket.upgrade(server.port, path)
        await attacker.send(client_frame(TEXT, fin=False))
        batch = client_frame(CONT, fin=False) * 10_000
        sent = 0
        async with asyncio.timeout(30):  # the old server never closed it
            while await attacker.send(batch):
                sent += 10_000
        await attacker.aclose()
        await still_served(server, db, viewer, run, 2)
    assert sent < 5_000_000, sent  # what the kernel's buffers took before the reset
    record(
        "hostile",
        f"{endpoint}: a TEXT frame with FIN=0, then empty continuation frames as fast as "
        "loopback takes them",
        1,
        "failed at the 128th fragment (1009) and read no more: the flooder's writes fail "
        "once the kernel's buffers fill; another viewer kept getting changes (its waits: "
        "`python -m bench.attacks`)",
    )


@pytest.mark.parametrize("endpoint", ENDPOINTS)
async def test_too_many_fragments(database_dsn: str, record: Any, endpoint: str) -> None:
    path, _ = ENDPOINTS[endpoint]
    async with running_server(database_dsn, pusher=APP) as server:
        attacker = await RawSocket.upgrade(server.port, path)
        fragments = client_frame(TEXT, b"{", fin=False) + client_frame(CONT, b" ", fin=False) * 200
        await attacker.send(fragments)
        code = await attacker.close_code()
        await attacker.aclose()
    assert code == 1009
    record(
        "hostile",
        f"{endpoint}: one message in 201 fragments of a byte each (well under the size limit)",
        1,
        "closed with 1009 at the 128th fragment (`OPSPUSH_MAX_FRAGMENTS`)",
    )


@pytest.mark.parametrize("endpoint", ENDPOINTS)
async def test_pings_whose_pongs_are_never_read(
    database_dsn: str, db: Factory, record: Any, endpoint: str
) -> None:
    path, _ = ENDPOINTS[endpoint]
    # The frame rate limit off: this is about the pongs, whatever the pace.
    async with running_server(database_dsn, pusher=APP, frame_rate=0, send_timeout=120) as server:
        user = await db.user()
        attacker = await RawSocket.upgrade(server.port, path, rcvbuf=4096)
        if endpoint == "/ws":
            hello = json.dumps({"op": "hello", "token": server.token(user)}).encode()
            await attacker.send(client_frame(TEXT, hello))
        batch = client_frame(PING, b"p" * 125) * 1_000
        async with asyncio.timeout(60):  # the old server answered them all, for ever
            while await attacker.send(batch):
                pass
        await attacker.aclose()
    record(
        "hostile",
        f"{endpoint}: pings with 125-byte payloads as fast as loopback takes them, from a "
        "client that reads none of the pongs (4 KiB receive buffer)",
        1,
        "16 more pings answered once the pongs stop draining, then the close, then the "
        "reset; its writes fail",
    )


async def _overlong_head(port: int, start: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(start)
    chunk = b"a" * 64 * 1024
    try:
        async with asyncio.timeout(20):  # the old server took 90 MB of it over 10 s
            for _ in range(1_000):
                writer.write(chunk)
                await writer.drain()
                if reader.at_eof() or reader._buffer:  # type: ignore[attr-defined]
                    break
            return await reader.read()
    except ConnectionError:
        # The server stopped reading: its close resets what we still had in flight. What
        # it answered before is in the reader's buffer.
        return bytes(reader._buffer)  # type: ignore[attr-defined]
    finally:
        writer.close()


@pytest.mark.parametrize("parser", ["httptools", "h11"])
async def test_request_heads_past_the_cap(database_dsn: str, record: Any, parser: str) -> None:
    starts = {
        "a header value": b"GET / HTTP/1.1\r\nHost: x\r\nX-A: ",
        "a URL": b"GET /?q=",
        "an upgrade's header": b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nX-A: ",
    }
    base = H11Guarded if parser == "h11" else HttpToolsGuarded
    async with running_server(database_dsn, http_base=base) as server:
        with watch_logs() as logs:
            answers = {
                name: await _overlong_head(server.port, start) for name, start in starts.items()
            }
            logs.assert_clean()
    for name, answer in answers.items():
        assert answer.startswith(b"HTTP/1.1 431 "), (name, answer[:200])
    record(
        "hostile",
        f"request heads that never end ({parser}): a header value, a URL, an upgrade's header, "
        "each written 64 KiB at a time",
        len(starts),
        f"431 and closed once the head passes {MAX_HEAD_BYTES // 1024} KiB; no more of it read",
    )


async def test_bodies_that_never_arrive(database_dsn: str, record: Any) -> None:
    request = (
        f"POST /apps/{APP.app_id}/events?auth_key={APP.key} HTTP/1.1\r\nHost: x\r\n"
        "Content-Type: application/json\r\nContent-Length: 200000\r\n\r\n{"
    ).encode()
    async with running_server(database_dsn, pusher=APP, hello_timeout=0.5) as server:
        before = counts(server)
        with watch_logs() as logs:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(request)
            async with asyncio.timeout(20):  # the old server held it for as long as it lived
                answer = await reader.read()
            writer.close()
            await wait_until(lambda: server_sockets(server) <= before.server_sockets, 10)
            logs.assert_clean()
    assert not answer.startswith(b"HTTP/1.1 5"), answer
    record(
        "hostile",
        "`POST /apps/{id}/events` announcing a 200,000-byte body and sending one byte of it",
        1,
        "closed once `OPSPUSH_HELLO_TIMEOUT` passes without the whole body; no ERROR log",
    )


async def test_http_connections_per_address(database_dsn: str, db: Factory, record: Any) -> None:
    async with running_server(
        database_dsn, max_connections_per_address=5, hello_timeout=30
    ) as server:
        user = await db.user()
        idle = server_sockets(server)
        held = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(5)]
        extra_reader, extra_writer = await asyncio.open_connection("127.0.0.1", server.port)
        async with asyncio.timeout(10):
            refused = await extra_reader.read()  # closed on arrival
        extra_writer.close()
        for _, writer in held:
            writer.close()
        await wait_until(lambda: server_sockets(server) <= idle, 10)
        # Upgraded sockets count against the socket limit, not the HTTP one.
        viewers = [await server.connect(user) for _ in range(4)]

        async def healthz() -> bytes:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            answer = await reader.read()
            writer.close()
            return answer

        answer = await healthz()
        for viewer in viewers:
            await viewer.close()
    assert refused == b""
    assert answer.startswith(b"HTTP/1.1 200")
    record(
        "hostile",
        "more idle HTTP connections from one address than `OPSPUSH_MAX_CONNECTIONS_PER_ADDRESS`",
        6,
        "the one past the limit is closed on arrival; upgraded sockets are counted by the "
        "socket limit instead",
    )


async def test_a_warning_near_the_open_file_limit(database_dsn: str, record: Any) -> None:
    async with opspush_process(database_dsn, open_files=256) as (process, port):
        assert process.stderr is not None
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(215)]
        async with asyncio.timeout(20):
            while b"near the open-file limit (256)" not in await process.stderr.readline():
                assert process.returncode is None
        for _, writer in held:
            writer.close()
    record(
        "hostile",
        "idle connections up to 84% of the process's open-file limit (256)",
        215,
        "a WARNING line says how many are open, near which limit (once a minute at most)",
    )
