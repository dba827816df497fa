"""The application factory: routes, and a lifespan that owns the Service."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles

from . import metrics
from .clock import Clock
from .config import Settings
from .http_api import review_pack_endpoint, run_endpoint
from .pusher_api import batch_events_endpoint, events_endpoint, terminate_endpoint
from .pusher_socket import pusher_endpoint
from .service import Service
from .tasks import cancel_and_wait
from .websocket import KeepServerSend, websocket_endpoint


def static_dir() -> Path:
    configured = os.environ.get("OPSPUSH_STATIC_DIR")
    if configured:
        return Path(configured)
    return Path(__file__).resolve().parent.parent / "static"


BackgroundHook = Callable[[Service], Awaitable[Coroutine[Any, Any, None] | None]]


def create_app(
    settings: Settings,
    dsn: str,
    *,
    clock: Clock | None = None,
    on_startup: BackgroundHook | None = None,
    extra_routes: list[BaseRoute] | None = None,
) -> Starlette:
    """Build the ASGI app. `dsn` is the database to use (DATABASE_URL or the embedded one).

    `on_startup` runs once the service is up and may return a coroutine to run beside the
    server for its whole life (the demo's simulator); the lifespan owns and cancels it.
    `extra_routes`: more routes (the demo's stand-in for the host's /broadcasting/auth).
    """
    service = Service(settings, dsn, clock=clock)
    registry = metrics.build_registry(service.stats, lambda: len(service.sessions))
    pages = static_dir()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await service.start()
        background: asyncio.Task[None] | None = None
        try:
            if on_startup is not None:
                job = await on_startup(service)
                if job is not None:
                    background = asyncio.create_task(job, name="opspush-background")
            yield
        finally:
            await cancel_and_wait(background)
            await service.stop()

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok")

    async def readyz(request: Request) -> Response:
        if await service.ready():
            return PlainTextResponse("ready")
        return PlainTextResponse("database unavailable", status_code=503)

    async def metrics_endpoint(request: Request) -> Response:
        return Response(metrics.render(registry), media_type=metrics.CONTENT_TYPE)

    def page(name: str) -> Route:
        async def endpoint(request: Request) -> Response:
            return FileResponse(pages / name, headers={"Cache-Control": "no-cache"})

        return endpoint  # type: ignore[return-value]

    routes: list[BaseRoute] = [
        WebSocketRoute("/ws", websocket_endpoint),
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics_endpoint),
        Route("/api/runs/{run_id:int}", run_endpoint),
        Route("/api/tenants/{tenant_id:int}/review-pack", review_pack_endpoint),
        Route("/runs/{run_id:int}", page("run.html")),
        Route("/tenants/{tenant_id:int}/review-pack", page("review-pack.html")),
        Route("/wall/{workspace_id:int}", page("wall.html")),
        Route("/echo/runs/{run_id:int}", page("echo-run.html")),
        Mount("/static", StaticFiles(directory=pages, check_dir=False), name="static"),
    ]
    routes += extra_routes or []
    if settings.pusher is not None:
        # pusher.md: the endpoint and the HTTP API are there when the app is configured.
        terminate = "/users/{user_id}/terminate_connections"
        routes += [
            WebSocketRoute("/app/{key}", pusher_endpoint),
            Route("/apps/{app_id}/events", events_endpoint, methods=["POST"]),
            Route("/apps/{app_id}/batch_events", batch_events_endpoint, methods=["POST"]),
            Route("/apps/{app_id}" + terminate, terminate_endpoint, methods=["POST"]),
            Route(terminate, terminate_endpoint, methods=["POST"]),
        ]
    app = Starlette(routes=routes, lifespan=lifespan, middleware=[Middleware(KeepServerSend)])
    app.state.service = service
    return app
