"""Following and managing jobs: /status/{id}, /jobs, DELETE /jobs/{id}, /jobs/{id}/events."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Annotated

import anyio
from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse, StreamingResponse

from musicgen_server.api.deps import OwnerDep, ServiceDep, find_job, parse_job_id
from musicgen_server.api.errors import field_error, not_found
from musicgen_server.api.schemas import DeleteResponse, ErrorResponse, JobList, JobView
from musicgen_server.api.service import Service
from musicgen_server.jobs.store import FINAL_STATUSES, STATUSES

router = APIRouter(tags=["jobs"])

_NOT_FOUND = {404: {"model": ErrorResponse, "description": "No such job (or not yours)."}}
CANCEL_WAIT_SECONDS = 2.0
EVENT_POLL_SECONDS = 0.2
EVENT_KEEPALIVE_SECONDS = 15.0


def view(service: Service, job) -> JobView:
    return JobView.of(job, service.store.queue_position(job))


@router.get("/status/{job_id}", response_model=JobView, responses=_NOT_FOUND)
def status(job_id: str, service: ServiceDep, owner: OwnerDep) -> JobView:
    """Where a job is: status, progress, queue position, audio_url when completed, error when
    failed, the seed used, timings and expiry."""
    return view(service, find_job(service, job_id, owner))


@router.get("/jobs", response_model=JobList)
def list_jobs(
    service: ServiceDep,
    owner: OwnerDep,
    status: Annotated[
        list[str] | None,
        Query(description="Only jobs with this status (repeat it, or separate with commas)."),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500, description="Jobs per page.")] = 50,
    offset: Annotated[int, Query(ge=0, description="Jobs to skip (newest first).")] = 0,
) -> JobList:
    """Jobs, newest first."""
    wanted = [part.strip() for value in status or [] for part in value.split(",") if part.strip()]
    unknown = [value for value in wanted if value not in STATUSES]
    if unknown:
        raise field_error("status", f"'{unknown[0]}' is not one of {', '.join(STATUSES)}")
    jobs, total = service.store.list(owner=owner, statuses=wanted, limit=limit, offset=offset)
    positions = service.store.queue_positions() if any(job.status == "queued" for job in jobs) else {}
    now = time.time()
    return JobList(
        jobs=[JobView.of(job, positions.get(job.id), now) for job in jobs],
        total=total,
        limit=limit,
        offset=offset,
        next_offset=offset + len(jobs) if offset + len(jobs) < total else None,
    )


@router.delete(
    "/jobs/{job_id}",
    response_model=DeleteResponse,
    responses={**_NOT_FOUND, 202: {"model": DeleteResponse, "description": "Cancelling; not stopped yet."}},
)
def delete_job(job_id: str, service: ServiceDep, owner: OwnerDep):
    """Cancel a queued or running job (it stops within a second), or delete a finished one and
    its audio."""
    job = find_job(service, job_id, owner)
    if job.finished:
        gone = service.store.delete(job.id, owner)
        if gone is None:
            raise not_found(f"no job {job_id}")
        service.artifacts.delete(gone.audio_file)
        return DeleteResponse(job_id=gone.id, status=gone.status, deleted=True)  # type: ignore[arg-type]
    job = service.store.cancel(job.id, owner)
    if job is None:
        raise not_found(f"no job {job_id}")
    service.worker.cancel(job.id)
    deadline = time.monotonic() + CANCEL_WAIT_SECONDS
    while not job.finished and time.monotonic() < deadline:
        time.sleep(0.05)
        job = service.store.get(job.id, owner) or job
    body = DeleteResponse(job_id=job.id, status=job.status, deleted=False)  # type: ignore[arg-type]
    return JSONResponse(body.model_dump(), status_code=200 if job.finished else 202)


@router.get(
    "/jobs/{job_id}/events",
    response_class=StreamingResponse,
    responses={
        **_NOT_FOUND,
        200: {"content": {"text/event-stream": {}}, "description": "Server-sent events."},
    },
)
async def events(job_id: str, service: ServiceDep, owner: OwnerDep) -> StreamingResponse:
    """Server-sent events until the job ends. Each event's data is the job as /status shows it:
    `progress` events while it is queued or running (on every change of status, position or
    progress), then one `completed`, `failed` or `cancelled` event, and the stream closes."""
    canonical = parse_job_id(job_id)
    job = await anyio.to_thread.run_sync(service.store.get, canonical, owner)
    if job is None:
        raise not_found(f"no job {job_id}")
    return StreamingResponse(
        _stream(service, canonical, owner),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _stream(service: Service, job_id: str, owner: str | None) -> AsyncIterator[str]:
    yield f"retry: {int(EVENT_POLL_SECONDS * 5000)}\n\n"
    last = None
    sent = 0
    quiet_since = time.monotonic()
    while True:
        job = await anyio.to_thread.run_sync(service.store.get, job_id, owner)
        if job is None:
            yield _event("error", {"detail": f"job {job_id} was deleted"}, sent)
            return
        current = await anyio.to_thread.run_sync(view, service, job)
        key = (current.status, current.progress, current.queue_position, current.cancel_requested)
        if key != last:
            last = key
            sent += 1
            final = current.status in FINAL_STATUSES
            yield _event(current.status if final else "progress", current.model_dump(), sent)
            quiet_since = time.monotonic()
            if final:
                return
        elif time.monotonic() - quiet_since > EVENT_KEEPALIVE_SECONDS:
            quiet_since = time.monotonic()
            yield ": keep-alive\n\n"
        if service.stopping:
            return
        await anyio.sleep(EVENT_POLL_SECONDS)


def _event(name: str, data: dict, event_id: int) -> str:
    return f"id: {event_id}\nevent: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"
