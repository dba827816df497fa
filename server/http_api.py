"""Plain HTTP reads for clients that cannot hold a socket (and the polling baseline).

Authorized exactly like the channels: the same decisions, so the same 404 for missing and
out-of-scope things, and 403 only inside scope.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.convertors import Convertor
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from . import access, protocol, views
from .auth import InvalidToken, verify_token
from .channels import MAX_ID, valid_id
from .service import Service


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


def _user_id(request: Request, service: Service) -> int | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        return None
    try:
        settings = service.settings
        return verify_token(token.strip(), settings.secret, max_ttl=settings.max_token_ttl).user_id
    except InvalidToken:
        return None


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
    async def read(service: Service, user_id: int, run_id: int) -> Response:
        snapshot = await service.storage.read_access([user_id])
        row = (await service.storage.read_runs([run_id])).get(run_id)
        scope = views.run_scope(row) if row is not None else None
        decision = access.decide_run(snapshot.users[user_id], snapshot.capabilities, scope)
        if row is None or decision != "allowed":
            return _refusal(decision)
        return _json(views.run_data(row), views.run_interval(row, service.engine.clock.now()))

    return await _authorized(request, "run_id", read)


async def review_pack_endpoint(request: Request) -> Response:
    async def read(service: Service, user_id: int, tenant_id: int) -> Response:
        snapshot = await service.storage.read_access([user_id])
        row = (await service.storage.read_pack_cards([tenant_id])).get(tenant_id)
        scope = views.tenant_scope(row) if row is not None else None
        decision = access.decide_review_pack(snapshot.users[user_id], snapshot.capabilities, scope)
        if row is None or decision != "allowed":
            return _refusal(decision)
        pack = row if row["id"] is not None else None
        return _json(views.pack_data(tenant_id, pack), views.pack_interval(pack))

    return await _authorized(request, "tenant_id", read)


async def _authorized(
    request: Request, key: str, read: Callable[[Service, int, int], Awaitable[Response]]
) -> Response:
    """401 without a valid token; otherwise the read, for the user the token names."""
    service = _service(request)
    user_id = _user_id(request, service)
    if user_id is None:
        return JSONResponse(_UNAUTHORIZED, status_code=401)
    ident: int = request.path_params[key]
    if not valid_id(ident):
        return _refusal("not_found")  # the same answer as for an id that does not exist
    return await read(service, user_id, ident)
