"""GET /metrics: Prometheus text format, open without a key like the probes."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from musicgen_server.api.deps import ServiceDep
from musicgen_server.api.metrics import CONTENT_TYPE

router = APIRouter(tags=["health"])


@router.get("/metrics", response_class=Response)
def metrics(service: ServiceDep) -> Response:
    """Jobs by status, queue depth, queue wait and generation time, audio generated, real-time
    factor, batch sizes, models loaded and their load time, HTTP requests."""
    return Response(service.metrics.render(), media_type=CONTENT_TYPE)
