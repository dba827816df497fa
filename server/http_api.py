"""Plain HTTP reads for clients that cannot hold a socket (and the polling baseline).

Authorized exactly like the channels: the same decisions, so the same 404 for missing and
out-of-scope things, and 403 only inside scope.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from . import access, protocol, views
from .auth import InvalidToken, verify_token
from .service import Service


def _service(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


def _user_id(request: Request, service: Service) -> int | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        return None
    try:
        return verify_token(token.strip(), service.settings.secret).user_id
    except InvalidToken:
        return None


def _refusal(decision: access.Decision) -> Response | None:
    if decision == "not_found":
        return JSONResponse({"error": "not_found"}, status_code=404)
    if decision == "forbidden":
        return JSONResponse({"error": "forbidden"}, status_code=403)
    return None


def _json(data: object, interval: int | None) -> Response:
    body = (
        f'{{"data":{protocol.encode(data)},"interval":{"null" if interval is None else interval}}}'
    )
    return Response(body, media_type="application/json", headers={"Cache-Control": "no-store"})


_UNAUTHORIZED = {"error": "unauthorized"}
_NOT_FOUND = {"error": "not_found"}


async def run_endpoint(request: Request) -> Response:
    service = _service(request)
    user_id = _user_id(request, service)
    if user_id is None:
        return JSONResponse(_UNAUTHORIZED, status_code=401)
    run_id = request.path_params["run_id"]
    snapshot = await service.storage.read_access([user_id])
    row = (await service.storage.read_runs([run_id])).get(run_id)
    facts = snapshot.users[user_id]
    scope = views.run_scope(row) if row is not None and facts.exists else None
    refusal = _refusal(access.decide_run(facts, snapshot.capabilities, scope))
    if refusal is not None or row is None:
        return refusal or JSONResponse(_NOT_FOUND, status_code=404)
    return _json(views.run_data(row), views.run_interval(row, service.engine.clock.now()))


async def review_pack_endpoint(request: Request) -> Response:
    service = _service(request)
    user_id = _user_id(request, service)
    if user_id is None:
        return JSONResponse(_UNAUTHORIZED, status_code=401)
    tenant_id = request.path_params["tenant_id"]
    snapshot = await service.storage.read_access([user_id])
    row = (await service.storage.read_pack_cards([tenant_id])).get(tenant_id)
    facts = snapshot.users[user_id]
    scope = views.tenant_scope(row) if row is not None and facts.exists else None
    refusal = _refusal(access.decide_review_pack(facts, snapshot.capabilities, scope))
    if refusal is not None or row is None:
        return refusal or JSONResponse(_NOT_FOUND, status_code=404)
    pack = row if row["id"] is not None else None
    return _json(views.pack_data(tenant_id, pack), views.pack_interval(pack))
