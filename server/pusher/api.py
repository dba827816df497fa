"""The Pusher HTTP API (docs/pusher.md): the host's events, and terminating a user's connections.

Every request is checked whole before anything is sent (nothing is delivered on any
error): its query (key, timestamp, signature) before its body is read, so a caller without
the secret never holds a connection waiting for a body; then the body, at most MAX_BODY,
against the signed body_md5. Then one message goes to every opspush process through
PostgreSQL (pusher_relay), this one included, and each hands it to its own sockets.

Replays: like Pusher, a request is refused when its auth_timestamp is more than 600 s off.
Within that window an identical request is accepted again: its signature binds the exact
body (body_md5), so a replay can only repeat the same event to the same channels, and a
host may legitimately send the same event twice in one second, which no signature cache
could tell from a replay.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

import asyncpg
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from ..database import relay as pusher_relay
from ..service import Service
from . import protocol as pusher
from .protocol import PusherError

log = logging.getLogger("opspush.pusher")

MAX_BODY = 256 * 1024  # 10 events of 10 KB, their channels and names, and room to spare


def _fail(status: int, message: str) -> Response:
    return JSONResponse({"error": message}, status_code=status)


async def _read_body(request: Request) -> bytes:
    body = bytearray()
    async for piece in request.stream():
        body += piece
        if len(body) > MAX_BODY:
            raise PusherError(413, "request body too large")
    return bytes(body)


async def _checked(request: Request) -> tuple[Service, bytes]:
    """The service and the body of a request whose app and signature are good."""
    service: Service = request.app.state.service
    app = service.settings.pusher
    if app is None or request.path_params.get("app_id", app.app_id) != app.app_id:
        raise PusherError(404, "unknown app")
    query = dict(request.query_params)
    # The query first: a request that is not the host's never gets the server to wait for
    # its body (the signature covers the body only through body_md5).
    reason = pusher.api_query_refusal(
        app.key, app.secret, request.method, request.url.path, query, time.time()
    )
    if reason is not None:
        raise _unsigned(reason)
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY:
        raise PusherError(413, "request body too large")  # said so before it is sent
    body = await _read_body(request)  # bounded by MAX_BODY as it streams
    reason = pusher.api_body_refusal(query, body)
    if reason is not None:
        raise _unsigned(reason)
    return service, body


def _unsigned(reason: str) -> PusherError:
    log.info("refused an HTTP API request: %s", reason)  # the reason only, never a secret
    return PusherError(401, "invalid signature")


async def _publish(service: Service, message: dict[str, object]) -> Response:
    try:
        await pusher_relay.publish(service.pool, message)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as error:
        log.warning("could not relay an HTTP API message: %s", error)
        return _fail(503, "database unavailable")
    return JSONResponse({})


def _events_endpoint(
    parse: Callable[[bytes], list[pusher.Event]],
) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        try:
            service, body = await _checked(request)
            events = parse(body)
        except PusherError as error:
            return _fail(error.status, error.message)
        except ClientDisconnect:
            return _fail(400, "incomplete body")
        return await _publish(
            service, {"t": "events", "events": [event.to_json() for event in events]}
        )

    return endpoint


events_endpoint = _events_endpoint(pusher.parse_events)
batch_events_endpoint = _events_endpoint(pusher.parse_batch)


async def terminate_endpoint(request: Request) -> Response:
    """`POST [/apps/{app_id}]/users/{user_id}/terminate_connections`.

    Pusher's Python library posts without the `/apps/{app_id}` prefix: both are served.
    """
    try:
        service, _ = await _checked(request)
        user_id = pusher.signed_user_id(pusher.encode_user(request.path_params["user_id"]))
    except PusherError as error:
        return _fail(error.status, error.message)
    except ClientDisconnect:
        return _fail(400, "incomplete body")
    return await _publish(service, {"t": "terminate", "user": user_id})
