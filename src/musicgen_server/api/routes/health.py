"""Probes, open without a key: /health (the seed's), /live (the process works) and /ready
(the default model is loaded and warmed up, and the server is not shutting down)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from musicgen_server import __version__
from musicgen_server.api.deps import ServiceDep
from musicgen_server.api.schemas import ErrorResponse, Health, Readiness

router = APIRouter(tags=["health"])


@router.get("/health", response_model=Health)
async def health() -> dict:
    """Always answers at once while the process runs; never waits on the model or the database."""
    return {"status": "healthy", "service": "musicgen-api", "version": __version__}


@router.get("/live", responses={503: {"model": ErrorResponse}})
async def live(service: ServiceDep):
    """200 while the job worker runs; 503 means the process should be restarted."""
    if not service.worker.alive:
        return JSONResponse({"status": "dead", "detail": "the job worker stopped: restart the service"}, 503)
    return {"status": "alive"}


@router.get("/ready", response_model=Readiness, responses={503: {"model": Readiness}})
async def ready(service: ServiceDep):
    """200 once the default model is loaded and has generated once; 503 with the reason before
    that (loading, weights missing) and while shutting down."""
    ok, reason = service.readiness()
    body = Readiness(
        status="ready" if ok else "not ready",
        model=service.settings.model,
        detail=None if ok else reason,
        warmup_seconds=round(service.warmup_seconds, 3) if service.warmup_seconds is not None else None,
    )
    return JSONResponse(body.model_dump(), status_code=200 if ok else 503)
