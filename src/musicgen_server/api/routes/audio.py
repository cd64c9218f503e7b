"""GET /audio/{job_id}.{ext}: the finished file, with HTTP Range so players can seek.

The name is parsed strictly (a canonical UUID, a dot, the extension of a known format) and the
path is built from the parsed parts by the artifact store; nothing a client sends is ever used
as a path. The job must be the caller's, completed, unexpired and in that format.
"""

from __future__ import annotations

import os
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import FileResponse

from musicgen_server.api.deps import OwnerDep, ServiceDep
from musicgen_server.api.errors import ApiError, not_found
from musicgen_server.api.schemas import ErrorResponse
from musicgen_server.generation import audio
from musicgen_server.jobs.artifacts import parse_name
from musicgen_server.jobs.store import COMPLETED

router = APIRouter(tags=["jobs"])


@router.api_route(
    "/audio/{name}",
    methods=["GET", "HEAD"],
    response_class=FileResponse,
    responses={
        200: {"content": {fmt.media_type: {}} for fmt in audio.FORMATS.values()},
        206: {"description": "The byte range asked for (Range: bytes=...)."},
        404: {"model": ErrorResponse},
        410: {"model": ErrorResponse, "description": "The audio expired (MUSICGEN_RESULT_TTL)."},
    },
)
def get_audio(
    name: str,
    service: ServiceDep,
    owner: OwnerDep,
    download: Annotated[
        bool, Query(description="Ask the browser to save the file instead of playing it.")
    ] = False,
) -> FileResponse:
    parsed = parse_name(name)
    if parsed is None:
        raise not_found("no such audio file: names are <job id>.<wav|flac|ogg|mp3> as in audio_url")
    job_id, fmt = parsed
    job = service.store.get(job_id, owner)
    if job is None:
        raise not_found(f"no job {job_id}")
    if job.status != COMPLETED or job.audio_file != name:
        raise not_found(f"job {job_id} has no file {name} (status {job.status}, format {job.format})")
    if job.is_expired():
        raise ApiError(
            410,
            f"the audio of job {job_id} expired and was deleted (results are kept "
            f"{service.settings.result_ttl:g} s)",
        )
    path = service.artifacts.path_for(name)
    try:
        stat = os.stat(path) if path is not None else None
    except FileNotFoundError:
        stat = None
    if stat is None:
        raise not_found(f"the audio of job {job_id} is gone")
    return FileResponse(
        path,
        stat_result=stat,
        media_type=audio.FORMATS[fmt].media_type,
        filename=name,
        content_disposition_type="attachment" if download else "inline",
        headers={"Cache-Control": "private, max-age=3600"},
    )
