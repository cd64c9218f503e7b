"""Dependencies of the routes: the service of this app, and who is asking (API keys)."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from musicgen_server.api.errors import ApiError, not_found
from musicgen_server.api.service import Service
from musicgen_server.jobs.store import Job


def get_service(request: Request) -> Service:
    return request.app.state.service


ServiceDep = Annotated[Service, Depends(get_service)]

_bearer = HTTPBearer(auto_error=False, description="An API key from MUSICGEN_API_KEYS, as a bearer token.")
_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="An API key from MUSICGEN_API_KEYS.")

_HOW = "send it as 'Authorization: Bearer <key>' or 'X-API-Key: <key>'"


def get_owner(
    service: ServiceDep,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
    header: Annotated[str | None, Security(_header)],
) -> str | None:
    """The key's hash, which scopes every job query; None when the server needs no keys
    (everyone sees every job then)."""
    if not service.keys_required:
        return None
    key = (bearer.credentials if bearer is not None else None) or header
    challenge = {"WWW-Authenticate": "Bearer"}
    if not key:
        raise ApiError(401, f"this server needs an API key: {_HOW}", headers=challenge)
    owner = service.owner_of(key.strip())
    if owner is None:
        raise ApiError(401, f"the API key is not valid: check it, and {_HOW}", headers=challenge)
    return owner


OwnerDep = Annotated[str | None, Depends(get_owner)]


def parse_job_id(job_id: str) -> str:
    """The canonical form of a job id; anything that is not a UUID is a 404."""
    try:
        return str(uuid.UUID(job_id))
    except (ValueError, AttributeError):
        raise not_found(f"no job '{job_id[:64]}': job ids are UUIDs as returned by POST /generate") from None


def find_job(service: Service, job_id: str, owner: str | None) -> Job:
    job = service.store.get(parse_job_id(job_id), owner)
    if job is None:
        raise not_found(f"no job {job_id}")
    return job
