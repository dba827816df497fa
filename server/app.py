"""The application factory: routes, and a lifespan that owns the Service."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any

from starlette.applications import Starlette
from starlette.convertors import register_url_convertor
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from .config import Settings
from .core.channels import valid_id
from .core.clock import Clock
from .pusher.api import batch_events_endpoint, events_endpoint, terminate_endpoint
from .pusher.hub import PusherHub
from .resources import static_dir
from .service import Service
from .tasks import cancel_and_wait
from .web import displays_api, metrics
from .web.headers import SecurityHeaders
from .web.http_api import IdConvertor, review_pack_endpoint, run_endpoint

register_url_convertor("id", IdConvertor())  # {name:id}: a bigint id (web/http_api.py)

METRICS_PUBLISH_SECONDS = 1.0

BackgroundHook = Callable[[Service], Awaitable[Coroutine[Any, Any, None] | None]]


def create_app(
    settings: Settings,
    dsn: str,
    *,
    clock: Clock | None = None,
    on_startup: BackgroundHook | None = None,
    extra_routes: list[BaseRoute] | None = None,
    shared_metrics: metrics.SharedMetrics | None = None,
) -> Starlette:
    """Build the ASGI app. `dsn` is the database to use (DATABASE_URL or the embedded one).

    `on_startup` runs once the service is up and may return a coroutine to run beside the
    server for its whole life (the demo's simulator); the lifespan owns and cancels it.
    `extra_routes`: more routes (the demo's stand-in for the host's /broadcasting/auth).
    `shared_metrics`: this is one worker of several, and /metrics shows them all.
    """
    service = Service(settings, dsn, clock=clock)
    if settings.pusher is not None:
        service.pusher_hub = PusherHub(
            terminate_user=service.terminate_user,
            presence_interval=settings.pusher_presence_interval,
            presence_expiry=settings.pusher_presence_expiry,
            max_presence_members=settings.pusher_max_presence_members,
        )

    def open_sockets() -> int:
        return len(service.sessions)

    registry = metrics.build_registry(service.stats, open_sockets, shared_metrics)
    pages = static_dir()

    async def publish_metrics(shared: metrics.SharedMetrics) -> None:
        """Keep this worker's figures current for scrapes that land on another worker."""
        while True:
            shared.publish(service.stats, open_sockets())
            await asyncio.sleep(METRICS_PUBLISH_SECONDS)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await service.start()
        background: asyncio.Task[None] | None = None
        publisher: asyncio.Task[None] | None = None
        try:
            if shared_metrics is not None:
                publisher = asyncio.create_task(
                    publish_metrics(shared_metrics), name="opspush-metrics-publisher"
                )
            if on_startup is not None:
                job = await on_startup(service)
                if job is not None:
                    background = asyncio.create_task(job, name="opspush-background")
            yield
        finally:
            await cancel_and_wait(background)
            await cancel_and_wait(publisher)
            await service.stop()
            if shared_metrics is not None:
                shared_metrics.publish(service.stats, 0)  # its last counters, no sockets

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok")

    async def readyz(request: Request) -> Response:
        if await service.ready():
            return PlainTextResponse("ready")
        return PlainTextResponse("database unavailable", status_code=503)

    async def metrics_endpoint(request: Request) -> Response:
        if not metrics.authorized(request.headers.get("authorization"), settings.metrics_token):
            return PlainTextResponse(
                "unauthorized", status_code=401, headers={"WWW-Authenticate": "Bearer"}
            )
        return Response(metrics.render(registry), media_type=metrics.CONTENT_TYPE)

    def page(name: str) -> Route:
        async def endpoint(request: Request) -> Response:
            if not all(valid_id(value) for value in request.path_params.values()):
                return PlainTextResponse("Not Found", status_code=404)
            return FileResponse(pages / name, headers={"Cache-Control": "no-cache"})

        return endpoint  # type: ignore[return-value]

    async def no_icon(request: Request) -> Response:
        return Response(status_code=204)  # browsers ask; an empty answer beats a logged 404

    routes: list[BaseRoute] = [
        Route("/", page("index.html")),
        Route("/favicon.ico", no_icon),
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics_endpoint),
        Route("/api/runs/{run_id:id}", run_endpoint),
        Route("/api/tenants/{tenant_id:id}/review-pack", review_pack_endpoint),
        Route("/runs/{run_id:id}", page("run.html")),
        Route("/tenants/{tenant_id:id}/review-pack", page("review-pack.html")),
        Route("/wall/{workspace_id:id}", page("wall.html")),
        Route("/wall", page("wall.html")),  # a display, paired (docs/displays.md)
        Route("/displays/approve", page("display-approve.html")),
        *displays_api.routes(),
        Route("/echo/runs/{run_id:id}", page("echo-run.html")),
        Mount("/static", StaticFiles(directory=pages, check_dir=False), name="static"),
    ]
    routes += extra_routes or []
    if settings.pusher is not None:
        # The HTTP API is there when the app is configured; its WebSocket endpoint,
        # `/app/{key}`, is served beside `/ws` by pusher/websocket.py (commands/runner.py).
        terminate = "/users/{user_id}/terminate_connections"
        routes += [
            Route("/apps/{app_id}/events", events_endpoint, methods=["POST"]),
            Route("/apps/{app_id}/batch_events", batch_events_endpoint, methods=["POST"]),
            Route("/apps/{app_id}" + terminate, terminate_endpoint, methods=["POST"]),
            Route(terminate, terminate_endpoint, methods=["POST"]),
        ]
    middleware = [
        Middleware(
            SecurityHeaders,
            frame_ancestors=settings.frame_ancestors,
            console_origins=settings.allowed_origins,
        ),
    ]
    app = Starlette(routes=routes, lifespan=lifespan, middleware=middleware)
    app.state.service = service
    return app
