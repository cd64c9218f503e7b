"""The FastAPI application: `create_app(settings)` wires the routes to a `Service` built when the
app starts (its lifespan) and closed when it stops."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from fastapi import Depends, FastAPI

from musicgen_server import __version__
from musicgen_server.api import errors
from musicgen_server.api.deps import get_owner
from musicgen_server.api.middleware import BodyLimit, RequestLog
from musicgen_server.api.routes import audio, generate, health, jobs, metrics, models, stream, web
from musicgen_server.api.service import Service
from musicgen_server.config import Settings

DESCRIPTION = """
Text to music with Meta's MusicGen. `POST /generate` queues a job and answers at once;
follow it with `GET /status/{job_id}` or the event stream `GET /jobs/{job_id}/events`, then
fetch `audio_url`. When the server has API keys, send one as `Authorization: Bearer <key>` or
`X-API-Key: <key>` (every endpoint but the probes and /metrics needs it).
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service = await anyio.to_thread.run_sync(Service, settings)
        app.state.service = service
        service.start()
        try:
            yield
        finally:
            await anyio.to_thread.run_sync(service.close)

    app = FastAPI(
        title="musicgen-server",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        # `/audio/<name>/` is a malformed name (404), not a redirect to another URL.
        redirect_slashes=False,
    )
    app.state.settings = settings
    errors.install(app)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestLog, metrics=lambda: _metrics(app))

    keyed = [Depends(get_owner)]
    app.include_router(health.router)
    app.include_router(metrics.router)
    app.include_router(generate.router, dependencies=keyed)
    app.include_router(stream.router, dependencies=keyed)
    app.include_router(jobs.router, dependencies=keyed)
    app.include_router(audio.router, dependencies=keyed)
    app.include_router(models.router, dependencies=keyed)
    web.mount(app)
    return app


def _metrics(app: FastAPI):
    service = getattr(app.state, "service", None)
    return service.metrics if service is not None else None
