"""POST /generate: validate everything, admit (queue cap), store the job, answer 202."""

from __future__ import annotations

import math

from fastapi import APIRouter, Response
from pydantic import ValidationError

from musicgen_server.api.deps import OwnerDep, ServiceDep
from musicgen_server.api.errors import ApiError, field_error
from musicgen_server.api.schemas import ErrorResponse, GenerateRequest, GenerateResponse
from musicgen_server.api.service import Service
from musicgen_server.errors import UnknownModelError
from musicgen_server.generation.params import GenerationParams
from musicgen_server.jobs.store import NewJob, QueueFull
from musicgen_server.models.manager import model_key
from musicgen_server.models.registry import resolve

router = APIRouter(tags=["jobs"])


@router.post(
    "/generate",
    status_code=202,
    response_model=GenerateResponse,
    responses={
        400: {"model": ErrorResponse, "description": "The body is not JSON."},
        401: {"model": ErrorResponse},
        413: {"model": ErrorResponse, "description": "The body is larger than MUSICGEN_MAX_BODY_BYTES."},
        422: {
            "model": ErrorResponse,
            "description": "A field is missing or out of range; `errors` says which.",
        },
        429: {"model": ErrorResponse, "description": "The queue is full; retry after Retry-After seconds."},
        503: {"model": ErrorResponse, "description": "The server is shutting down."},
    },
)
def generate(
    body: GenerateRequest, response: Response, service: ServiceDep, owner: OwnerDep
) -> GenerateResponse:
    """Queue a generation. Poll `GET /status/{job_id}` or follow `GET /jobs/{job_id}/events`."""
    settings = service.settings
    if service.draining:
        raise ApiError(
            503,
            "the server is shutting down and takes no new jobs: retry shortly",
            headers={"Retry-After": "5"},
        )
    new = job_from_request(body, service, owner)
    try:
        job = service.store.submit(new, max_queue=settings.max_queue)
    except QueueFull as full:
        service.metrics.rejected.labels("queue_full").inc()
        wait = service.worker.estimated_wait(settings.max_batch_size)
        retry = max(1, min(120, math.ceil(wait)))
        raise ApiError(
            429,
            f"the queue is full ({full.depth} jobs waiting, the limit is {full.limit}): retry in {retry} s",
            headers={"Retry-After": str(retry)},
        ) from None
    service.worker.wake()
    service.metrics.submitted.inc()
    response.headers["Location"] = f"/status/{job.id}"
    return GenerateResponse(job_id=job.id, status="queued")


def job_from_request(body: GenerateRequest, service: Service, owner: str | None) -> NewJob:
    """Every check of a generation request beyond its schema, and the job it becomes (with its
    seed fixed). Raises ApiError (422) naming the field to change."""
    settings = service.settings
    prompt = body.prompt.strip()
    if not prompt:
        raise field_error("prompt", "is empty: describe the music you want, e.g. 'upbeat electronic music'")
    if len(prompt) > settings.max_prompt_chars:
        raise field_error(
            "prompt",
            f"is {len(prompt)} characters long; the limit is {settings.max_prompt_chars}: shorten it",
        )
    name = body.model if body.model is not None else settings.model
    try:
        spec = resolve(name)
    except UnknownModelError as error:
        raise field_error("model", error.message) from None
    if spec.kind == "local" and model_key(spec) != model_key(resolve(settings.model)):
        raise field_error(
            "model",
            "folders on the server cannot be chosen over HTTP: use an alias (see GET /models) or a repo id",
        )
    limit = settings.max_duration
    loaded = service.generator.manager.peek(spec.name)
    if loaded is not None:
        limit = min(limit, loaded.max_duration)
    if body.duration is not None and body.duration > limit + 1e-9:
        raise field_error(
            "duration", f"{body.duration:g} s is above the maximum of {limit:g} s: ask for less"
        )
    try:
        params = GenerationParams(**body.sampling()).with_seed()
    except ValidationError as error:  # the schema has the same constraints; kept as a safety net
        first = error.errors()[0]
        raise field_error(str(first["loc"][0]), first["msg"]) from None
    return NewJob(
        prompt=prompt,
        model=spec.name,
        params=params,
        format=body.format,
        normalize=body.normalize,
        owner=owner,
    )
