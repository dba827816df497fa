"""A WebSocket client at the byte level, for input no well-behaved library will send:
floods of empty continuation frames, pings that never read their pongs."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import socket
import struct
from dataclasses import dataclass, field

TEXT, CONT, CLOSE, PING, PONG = 0x1, 0x0, 0x8, 0x9, 0xA


def client_frame(opcode: int, payload: bytes = b"", *, fin: bool = True) -> bytes:
    """One masked client frame (RFC 6455 5.2)."""
    head = bytes([(0x80 if fin else 0) | opcode])
    length = len(payload)
    if length < 126:
        head += bytes([0x80 | length])
    elif length < 2**16:
        head += bytes([0x80 | 126]) + struct.pack("!H", length)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", length)
    mask = os.urandom(4)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


@dataclass
class RawSocket:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    status: int
    received: bytearray = field(default_factory=bytearray)

    @classmethod
    async def upgrade(
        cls, port: int, path: str, *, headers: tuple[str, ...] = (), rcvbuf: int | None = None
    ) -> RawSocket:
        sock = socket.socket()
        if rcvbuf is not None:  # before connect: the window the peer may fill
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        reader, writer = await asyncio.open_connection(sock=sock)
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [
            f"GET {path} HTTP/1.1",
            f"Host: 127.0.0.1:{port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
            *headers,
        ]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        async with asyncio.timeout(10):
            head = await reader.readuntil(b"\r\n\r\n")
        return cls(reader, writer, int(head.split(b" ", 2)[1]))

    async def send(self, data: bytes) -> bool:
        """Write and drain; False once the server has closed or reset the connection."""
        try:
            self.writer.write(data)
            await self.writer.drain()
        except (ConnectionError, OSError):
            return False
        return not self.writer.is_closing()

    async def recv(self, timeout: float = 10.0) -> tuple[int, bytes] | None:
        """The server's next frame (opcode, payload); None at the end of the stream."""
        async with asyncio.timeout(timeout):
            while True:
                frame = self._next_frame()
                if frame is not None:
                    return frame
                try:
                    chunk = await self.reader.read(65536)
                except (ConnectionError, OSError):
                    return None
                if not chunk:
                    return None
                self.received += chunk

    async def close_code(self, timeout: float = 10.0) -> int | None:
        """Read the server's frames up to its close frame: its code (None: the stream ended
        without one)."""
        async with asyncio.timeout(timeout):
            while (frame := await self.recv(timeout)) is not None:
                opcode, payload = frame
                if opcode == CLOSE:
                    return struct.unpack("!H", payload[:2])[0] if payload else 1005
        return None

    def _next_frame(self) -> tuple[int, bytes] | None:
        data = self.received
        if len(data) < 2:
            return None
        length, offset = data[1] & 0x7F, 2
        if length == 126:
            if len(data) < 4:
                return None
            length, offset = struct.unpack("!H", data[2:4])[0], 4
        elif length == 127:
            if len(data) < 10:
                return None
            length, offset = struct.unpack("!Q", data[2:10])[0], 10
        if len(data) < offset + length:
            return None
        frame = (data[0] & 0x0F, bytes(data[offset : offset + length]))
        del data[: offset + length]
        return frame

    async def aclose(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()
