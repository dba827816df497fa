"""The HTTP side of wall displays (docs/displays.md): pairing, approval, tokens, listing and
revocation. Every answer is JSON, `Cache-Control: no-store`; a refusal is `{"error": …}`,
never a traceback (a database that does not answer is a 503).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

import asyncpg
import segno
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from ..core import displays as rules
from ..core.auth import Identity, InvalidToken, mint_token, verify_token
from ..core.channels import valid_id
from ..database import displays
from ..service import Service

log = logging.getLogger("opspush.displays")

MAX_BODY = 4096
STATUS = {
    "bad_request": 400,
    "unauthorized": 401,
    "forbidden": 403,
    "not_found": 404,
    "invalid_code": 400,
    "expired": 410,
    "rate_limited": 429,
    "too_many_pending": 429,
}

Endpoint = Callable[[Request], Awaitable[Response]]


def _answer(data: dict[str, Any], status: int = 200) -> Response:
    return JSONResponse(data, status_code=status, headers={"Cache-Control": "no-store"})


def _error(code: str, message: str | None = None) -> Response:
    body = {"error": code} if message is None else {"error": code, "message": message}
    return _answer(body, STATUS[code])


class Refused(Exception):
    def __init__(self, code: str, message: str | None = None) -> None:
        self.code = code
        self.message = message


def _json_endpoint(handler: Callable[[Request, Service], Awaitable[Response]]) -> Endpoint:
    async def endpoint(request: Request) -> Response:
        service: Service = request.app.state.service
        try:
            return await handler(request, service)
        except Refused as refused:
            return _error(refused.code, refused.message)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
            log.warning("display request failed on the database: %s", error)
            return _answer({"error": "unavailable"}, 503)

    return endpoint


async def _body(request: Request) -> dict[str, Any]:
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BODY:
            raise Refused("bad_request", "the body is too large")
    try:
        value = json.loads(raw or b"{}")
    except ValueError:
        raise Refused("bad_request", "the body must be a JSON object") from None
    if not isinstance(value, dict):
        raise Refused("bad_request", "the body must be a JSON object")
    return value


def _address(request: Request, service: Service) -> str:
    peer = request.client.host if request.client else None
    return service.client_address(peer, request.headers.getlist("x-forwarded-for"))


def _user(request: Request, service: Service) -> Identity:
    """A user's own token: 401 without a valid one; 403 for a display's or a `channels`
    token (the host decided what those may watch; approving and revoking is neither)."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Refused("unauthorized")
    settings = service.settings
    try:
        identity = verify_token(
            token.strip(),
            settings.secret,
            max_ttl=settings.max_token_ttl,
            max_channel_ttl=settings.max_channel_token_ttl,
        )
    except InvalidToken:
        raise Refused("unauthorized") from None
    if identity.display_id is not None or identity.channels is not None:
        raise Refused("forbidden")
    return identity


async def _may_watch(service: Service, identity: Identity, workspace_id: int) -> None:
    """Refused with the same `not_found` / `forbidden` as a subscription to the wall."""
    pool = service.pool
    snapshot = await service.storage.read_access([identity.user_id])
    decision = rules.approver_decision(
        snapshot.users[identity.user_id],
        snapshot.capabilities,
        workspace_id,
        await displays.workspace_exists(pool, workspace_id),
    )
    if decision != "allowed":
        raise Refused(decision)


def approval_address(request: Request, service: Service, code: str) -> str:
    """Where someone approves this code: OPSPUSH_DISPLAY_APPROVE_URL (`{code}` replaced, or
    `code=` added), else this server's own approval page."""
    shown = rules.format_code(code)
    configured = service.settings.display_approve_url
    if configured is None:
        configured = str(request.base_url).rstrip("/") + "/displays/approve"
    if "{code}" in configured:
        return configured.replace("{code}", quote(shown))
    return f"{configured}{'&' if '?' in configured else '?'}code={quote(shown)}"


def qr_svg(text: str) -> str:
    """The QR code of `text`, as an inline SVG (made here: the page fetches nothing else)."""
    code = segno.make(text, error="m")
    svg: str = code.svg_inline(scale=6, border=2, dark="#000", light="#fff", omitsize=True)
    return svg


# -- the page's side: pairing, polling, tokens ------------------------------------------------


async def start_pairing(request: Request, service: Service) -> Response:
    settings = service.settings
    made = await displays.create_pairing(
        service.pool,
        _address(request, service),
        request.headers.get("user-agent", ""),
        ttl=settings.pairing_ttl,
        rate=settings.pairing_rate,
    )
    if isinstance(made, str):
        raise Refused(made, "too many pairing requests from this address; try again later")
    address = approval_address(request, service, made.user_code)
    return _answer(
        {
            "device_code": made.device_code,
            "user_code": rules.format_code(made.user_code),
            "verification_uri": address.split("?")[0],
            "verification_uri_complete": address,
            "qr_svg": qr_svg(address),
            "expires_in": int(made.expires_in),
            "interval": rules.POLL_INTERVAL,
        },
        201,
    )


async def poll_pairing(request: Request, service: Service) -> Response:
    device_code = (await _body(request)).get("device_code")
    if not rules.plausible_secret(device_code):
        raise Refused("bad_request", "`device_code` is required")
    assert isinstance(device_code, str)
    polled = await displays.poll_pairing(service.pool, device_code)
    if polled.state == "pending":
        return _answer({"status": "pending", "interval": rules.POLL_INTERVAL})
    if polled.state == "expired" or polled.display is None:
        raise Refused("expired", "this pairing is over: ask for a new code")
    display = polled.display
    return _answer(
        {
            "status": "approved",
            "credential": polled.credential,
            "display": {
                "id": display.id,
                "name": display.name,
                "workspace_id": display.workspace_id,
            },
        }
    )


async def exchange_token(request: Request, service: Service) -> Response:
    """A display's credential for a short token of its wall (OPSPUSH_DISPLAY_TOKEN_TTL)."""
    credential = (await _body(request)).get("credential")
    display = await displays.exchange(service.pool, credential)
    if display is None:
        raise Refused("unauthorized", "this display is not signed in: pair it again")
    await displays.seen(
        service.pool, display.id, _address(request, service), request.headers.get("user-agent", "")
    )
    ttl = service.settings.display_token_ttl
    token = mint_token(
        display.approver_id,
        service.settings.secret,
        ttl=ttl,
        display=(display.id, display.workspace_id),
    )
    expires = verify_token(token, service.settings.secret, max_ttl=service.settings.max_token_ttl)
    return _answer(
        {
            "token": token,
            "expires_at": expires.expires_at_iso,
            "expires_in": int(ttl),
            "display": {
                "id": display.id,
                "name": display.name,
                "workspace_id": display.workspace_id,
            },
        }
    )


# -- the approver's side -------------------------------------------------------------------


async def approve(request: Request, service: Service) -> Response:
    identity = _user(request, service)
    body = await _body(request)
    result = await displays.approve_as(
        service.pool, identity.user_id, body.get("code"), body.get("workspace_id"), body.get("name")
    )
    if isinstance(result, str):
        messages = {
            "bad_request": "`code`, `workspace_id` and `name` (1 to 100 characters) are required",
            "rate_limited": "too many wrong codes: try again in a few minutes",
            "invalid_code": "no display is waiting with this code",
        }
        raise Refused(result, messages.get(result))
    return _answer({"display": result.as_json()}, 201)


async def list_displays(request: Request, service: Service) -> Response:
    identity = _user(request, service)
    raw = request.query_params.get("workspace_id", "")
    workspace_id = int(raw) if raw.isascii() and raw.isdigit() and len(raw) <= 19 else 0
    if not valid_id(workspace_id):
        raise Refused("bad_request", "`workspace_id` must be a workspace id")
    await _may_watch(service, identity, workspace_id)
    rows = await displays.listed(service.pool, workspace_id)
    return _answer({"displays": [row.as_json() for row in rows]})


async def revoke_display(request: Request, service: Service) -> Response:
    identity = _user(request, service)
    display_id: int = request.path_params["display_id"]
    display = await displays.get(service.pool, display_id) if valid_id(display_id) else None
    if display is None or display.revoked_at is not None:
        raise Refused("not_found")
    await _may_watch(service, identity, display.workspace_id)
    if not await displays.revoke(service.pool, display_id):
        raise Refused("not_found")
    return _answer({"revoked": display_id})


def routes() -> list[BaseRoute]:
    return [
        Route("/api/displays/pairings", _json_endpoint(start_pairing), methods=["POST"]),
        Route("/api/displays/pairings/poll", _json_endpoint(poll_pairing), methods=["POST"]),
        Route("/api/displays/token", _json_endpoint(exchange_token), methods=["POST"]),
        Route("/api/displays/approve", _json_endpoint(approve), methods=["POST"]),
        Route("/api/displays", _json_endpoint(list_displays), methods=["GET"]),
        Route("/api/displays/{display_id:id}", _json_endpoint(revoke_display), methods=["DELETE"]),
    ]
