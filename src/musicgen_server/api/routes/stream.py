"""POST /generate/stream: the audio as it is made, in the response body.

A stream goes straight to the model's engine in this process instead of through the job queue:
the bytes must come from the process holding the connection. It is validated like POST
/generate, counts against the same queue cap, and is cancelled the moment the client hangs up.
Streams are not stored: use POST /generate for a clip to fetch again later.
"""

from __future__ import annotations

import logging
import math

import anyio
from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from musicgen_server.api.deps import OwnerDep, ServiceDep
from musicgen_server.api.errors import ApiError
from musicgen_server.api.routes.generate import job_from_request
from musicgen_server.api.schemas import ErrorResponse, StreamRequest
from musicgen_server.generation.handle import GenerationHandle
from musicgen_server.generation.params import GenerationRequest, clip_shape_for
from musicgen_server.generation.streaming import StreamEncoder, encode_stream, stream_encoder

log = logging.getLogger(__name__)
router = APIRouter(tags=["jobs"])

_END = object()


@router.post(
    "/generate/stream",
    response_class=StreamingResponse,
    responses={
        200: {
            "content": {"audio/wav": {}, "audio/ogg": {}, "application/octet-stream": {}},
            "description": "The audio, sent as it is generated.",
        },
        401: {"model": ErrorResponse},
        422: {"model": ErrorResponse},
        429: {"model": ErrorResponse},
        503: {"model": ErrorResponse},
    },
)
async def generate_stream(body: StreamRequest, service: ServiceDep, owner: OwnerDep) -> StreamingResponse:
    """Generate and stream at once: `wav` (a complete file whose header already has the final
    size), `ogg` (Vorbis) or `pcm` (raw s16le; rate and channels in the X-Audio-* headers). The
    first audio arrives after about half a second of music has been generated."""
    if service.draining:
        raise ApiError(503, "the server is shutting down and takes no new streams: retry shortly",
                       headers={"Retry-After": "5"})
    new = job_from_request(body, service, owner)
    waiting = await anyio.to_thread.run_sync(service.store.queue_depth)
    engine = await anyio.to_thread.run_sync(service.generator.engine, new.model)
    if waiting + engine.pending >= service.settings.max_queue:
        service.metrics.rejected.labels("queue_full").inc()
        retry = max(1, min(120, math.ceil(service.worker.estimated_wait(service.settings.max_batch_size))))
        raise ApiError(429, f"the queue is full: retry in {retry} s", headers={"Retry-After": str(retry)})
    model = engine.model
    shape = clip_shape_for(model, new.params.duration)
    encoder = stream_encoder(body.format, model.sample_rate, model.channels, total_samples=shape.samples)
    headers = {
        **encoder.headers,
        "X-Seed": str(new.params.seed),
        "X-Model": model.name,
        "X-Audio-Duration": f"{shape.samples / model.sample_rate:g}",
        "Cache-Control": "no-store",
    }
    # Submitted last: from here on the response owns the handle and cancels it if it ends early.
    handle = engine.submit(GenerationRequest(new.prompt, new.params))
    log.info("stream %s started (model %s, %s, %gs)", handle.request_id, model.name, body.format, new.params.duration)
    return StreamingResponse(_send(handle, encoder), media_type=encoder.media_type, headers=headers)


async def _send(handle: GenerationHandle, encoder: StreamEncoder):
    """Encoded bytes as chunks arrive. Each piece is taken in a worker thread (waiting for audio
    blocks); a client that goes away cancels the generation."""
    pieces = encode_stream(handle.chunks(), encoder)
    try:
        while (data := await anyio.to_thread.run_sync(next, pieces, _END)) is not _END:
            yield data
        log.info("stream %s finished", handle.request_id)
    except Exception:
        # Headers are sent: the only way left to say "failed" is to end the body early.
        log.exception("stream %s failed", handle.request_id)
    finally:
        handle.cancel()  # no-op once finished
        pieces.close()
