"""Plain HTTP reads for clients that cannot hold a socket (and the polling baseline).

Authorized exactly like the channels: the same decisions, so the same 404 for missing and
out-of-scope things, and 403 only inside scope; a token with a `channels` claim (docs/attach.md)
reads what it lists and nothing else, as on the socket.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import asyncpg
from starlette.convertors import Convertor
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..core import access, protocol, views
from ..core.access import CapabilityTable, Decision, UserFacts
from ..core.auth import Identity, InvalidToken, verify_token
from ..core.channels import MAX_ID, Channel, Kind, valid_id
from ..service import Service

# What a read raises when the database is away or the schema is not there.
DATABASE_ERRORS = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)


class IdConvertor(Convertor[int]):
    """`{name:id}` in a route: digits, as an int; 0 (never an id) for more digits than any
    id has, so that no path turns into a huge int (or a 4,300-digit conversion error).
    Endpoints answer 404 for an id outside `valid_id` before any query."""

    regex = "[0-9]+"

    def convert(self, value: str) -> int:
        return int(value) if len(value) <= len(str(MAX_ID)) else 0

    def to_string(self, value: int) -> str:
        return str(value)


def _service(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


def _identity(request: Request, service: Service) -> Identity | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        return None
    settings = service.settings
    try:
        return verify_token(
            token.strip(),
            settings.secret,
            max_ttl=settings.max_token_ttl,
            max_channel_ttl=settings.max_channel_token_ttl,
        )
    except InvalidToken:
        return None


async def _decide(
    service: Service,
    identity: Identity,
    channel: Channel,
    exists: bool,
    by_tables: Callable[[UserFacts, CapabilityTable], Decision],
) -> Decision:
    """A subscription's decision: the token's `channels` claim when it has one (existence
    still from the read), else the access tables; an unknown user sees nothing."""
    snapshot = await service.storage.read_access([identity.user_id])
    facts = snapshot.users[identity.user_id]
    if not facts.exists:
        return "not_found"
    if identity.channels is not None:
        if channel.name not in identity.channels:
            return "forbidden"
        return "allowed" if exists else "not_found"
    return by_tables(facts, snapshot.capabilities)


def _refusal(decision: access.Decision) -> Response:
    """403 only inside scope; anything else, missing or out of scope, is the same 404."""
    if decision == "forbidden":
        return JSONResponse({"error": "forbidden"}, status_code=403)
    return JSONResponse({"error": "not_found"}, status_code=404)


def _json(data: object, interval: int | None) -> Response:
    body = (
        f'{{"data":{protocol.encode(data)},"interval":{"null" if interval is None else interval}}}'
    )
    return Response(body, media_type="application/json", headers={"Cache-Control": "no-store"})


_UNAUTHORIZED = {"error": "unauthorized"}


async def run_endpoint(request: Request) -> Response:
    async def read(service: Service, identity: Identity, run_id: int) -> Response:
        row = (await service.storage.read_runs([run_id])).get(run_id)
        scope = views.run_scope(row) if row is not None else None

        def by_tables(facts: UserFacts, capabilities: CapabilityTable) -> Decision:
            return access.decide_run(facts, capabilities, scope)

        channel = Channel(Kind.RUN, run_id)
        decision = await _decide(service, identity, channel, row is not None, by_tables)
        if row is None or decision != "allowed":
            return _refusal(decision)
        return _json(views.run_data(row), views.run_interval(row, service.engine.clock.now()))

    return await _authorized(request, "run_id", read)


async def review_pack_endpoint(request: Request) -> Response:
    async def read(service: Service, identity: Identity, tenant_id: int) -> Response:
        row = (await service.storage.read_pack_cards([tenant_id])).get(tenant_id)
        scope = views.tenant_scope(row) if row is not None else None

        def by_tables(facts: UserFacts, capabilities: CapabilityTable) -> Decision:
            return access.decide_review_pack(facts, capabilities, scope)

        channel = Channel(Kind.REVIEW_PACK, tenant_id)
        decision = await _decide(service, identity, channel, row is not None, by_tables)
        if row is None or decision != "allowed":
            return _refusal(decision)
        pack = row if row["id"] is not None else None
        data = views.pack_data(tenant_id, pack, tenant_name=row["tenant_name"])
        return _json(data, views.pack_interval(pack))

    return await _authorized(request, "tenant_id", read)


async def _authorized(
    request: Request, key: str, read: Callable[[Service, Identity, int], Awaitable[Response]]
) -> Response:
    """401 without a valid token; otherwise the read, for the identity the token names."""
    service = _service(request)
    identity = _identity(request, service)
    if identity is None:
        return JSONResponse(_UNAUTHORIZED, status_code=401)
    if identity.display_id is not None:
        return _refusal("forbidden")  # a display's token watches its wall, and nothing else
    ident: int = request.path_params[key]
    if not valid_id(ident):
        return _refusal("not_found")  # the same answer as for an id that does not exist
    what = key.removesuffix("_id")  # run, tenant
    try:
        response = await read(service, identity, ident)
    except DATABASE_ERRORS as error:
        # A 503 the client may retry, and a line per interval rather than a traceback each.
        service.http_failures.failed(what, error, time.monotonic())
        return JSONResponse({"error": "database unavailable"}, status_code=503)
    service.http_failures.succeeded(what, time.monotonic())
    return response
