"""Security headers on every HTTP response: pages, static files, the API (issue 13).

The pages load only their own scripts and styles (no inline code) and talk only to their
own sockets and to the console's origins (OPSPUSH_ALLOWED_ORIGINS: the Echo page asks the
console's /broadcasting/auth), so the policy can be strict; host pages that embed them are
named by OPSPUSH_FRAME_ANCESTORS.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from starlette.datastructures import Headers, MutableHeaders
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# A Host header that can go into the policy verbatim: a name or an address, and a port.
_HOST = re.compile(r"([a-z0-9.-]+|\[[0-9a-f:.]+\])(:[0-9]{1,5})?", re.IGNORECASE)


def content_security_policy(
    host: str | None, frame_ancestors: str, console_origins: Iterable[str] = ()
) -> str:
    """The policy for a response to a request with this Host header.

    `'self'` covers the page's own ws:/wss: socket in current browsers (CSP level 3); the
    explicit ws:// and wss:// sources are for older ones. A Host that is not a plain
    host[:port] is left out rather than let into the header.
    """
    connect = ["'self'"]
    if host and _HOST.fullmatch(host):
        connect += [f"ws://{host}", f"wss://{host}"]
    connect += sorted(console_origins)  # validated origins (config.py), never a wildcard
    directives = [
        "default-src 'self'",
        f"connect-src {' '.join(connect)}",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'none'",
        f"frame-ancestors {frame_ancestors}",
    ]
    return "; ".join(directives)


def security_headers(
    host: str | None, frame_ancestors: str, console_origins: Iterable[str] = ()
) -> dict[str, str]:
    return {
        "Content-Security-Policy": content_security_policy(host, frame_ancestors, console_origins),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
    }


class SecurityHeaders:
    """ASGI middleware: add `security_headers` to every HTTP response."""

    def __init__(
        self, app: ASGIApp, frame_ancestors: str, console_origins: Iterable[str] = ()
    ) -> None:
        self.app = app
        self.frame_ancestors = frame_ancestors
        self.console_origins = tuple(console_origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        hosts = Headers(scope=scope).getlist("host")
        if len(hosts) > 1:
            # RFC 9112 3.2: more than one Host is a 400; which one to trust would be a guess.
            extra = security_headers(None, self.frame_ancestors, self.console_origins)
            refusal = PlainTextResponse("Host may appear once", status_code=400, headers=extra)
            await refusal(scope, receive, send)
            return
        extra = security_headers(
            hosts[0] if hosts else None, self.frame_ancestors, self.console_origins
        )

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in extra.items():
                    headers[name] = value
            await send(message)

        await self.app(scope, receive, send_with_headers)
