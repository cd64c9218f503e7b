"""What goes over the wire. Sampling constraints are not written here: they are read from
`GenerationParams`, the one place they are defined, so the API, the CLI and the library refuse
the same values with the same limits (and /docs shows them)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from musicgen_server.errors import MusicgenError
from musicgen_server.generation import audio
from musicgen_server.generation.params import GenerationParams
from musicgen_server.generation.streaming import STREAM_FORMATS
from musicgen_server.jobs.store import COMPLETED, QUEUED, RUNNING, Job

JobStatus = Literal["queued", "running", "completed", "failed", "cancelled"]

_NUMERIC = ("duration", "temperature", "top_k", "top_p", "guidance_scale", "seed")


def _like(name: str) -> Any:
    """An optional field with GenerationParams' constraints and description for `name`."""
    info = GenerationParams.model_fields[name]
    constraints = {}
    for item in info.metadata:
        for bound in ("gt", "ge", "lt", "le"):
            if getattr(item, bound, None) is not None:
                constraints[bound] = getattr(item, bound)
    default = "random, reported back" if name == "seed" else info.default
    return Field(None, description=f"{info.description} Default: {default}.", **constraints)


class GenerateRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        allow_inf_nan=False,
        json_schema_extra={"examples": [{"prompt": "upbeat electronic music", "duration": 5}]},
    )

    prompt: str = Field(..., description="What the music should sound like.")
    duration: float | None = _like("duration")
    model: str | None = Field(
        None, description="Alias (see GET /models) or Hugging Face repo id; default: the server's."
    )
    temperature: float | None = _like("temperature")
    top_k: int | None = _like("top_k")
    top_p: float | None = _like("top_p")
    guidance_scale: float | None = _like("guidance_scale")
    seed: int | None = _like("seed")
    format: str = Field("wav", description=f"Audio format: {', '.join(audio.FORMATS)}.")
    normalize: str = Field("none", description=f"Level: {', '.join(audio.NORMALIZE_MODES)}.")

    @field_validator(*_NUMERIC, mode="before")
    @classmethod
    def _no_booleans(cls, value: object) -> object:
        # JSON true/false would otherwise count as 1/0.
        if isinstance(value, bool):
            raise ValueError("must be a number, not true or false")
        return value

    @field_validator("format", mode="before")
    @classmethod
    def _format(cls, value: object) -> object:
        if isinstance(value, str):
            try:
                return audio.get_format(value).name
            except MusicgenError as error:
                raise ValueError(error.message) from None
        return value

    @field_validator("normalize", mode="before")
    @classmethod
    def _normalize(cls, value: object) -> object:
        if isinstance(value, str):
            mode = value.strip().lower()
            if mode not in audio.NORMALIZE_MODES:
                raise ValueError(f"'{value}' is not one of {', '.join(audio.NORMALIZE_MODES)}")
            return mode
        return value

    def sampling(self) -> dict[str, Any]:
        """The GenerationParams fields the request set."""
        fields = ("duration", "temperature", "top_k", "top_p", "guidance_scale", "seed")
        return {name: getattr(self, name) for name in fields if getattr(self, name) is not None}


class StreamRequest(GenerateRequest):
    """POST /generate/stream: the same fields, with the stream formats."""

    model_config = ConfigDict(
        extra="forbid",
        allow_inf_nan=False,
        json_schema_extra={"examples": [{"prompt": "upbeat electronic music", "duration": 10, "format": "wav"}]},
    )

    format: str = Field("wav", description=f"Stream format: {', '.join(STREAM_FORMATS)} (s16le).")

    @field_validator("format", mode="before")
    @classmethod
    def _format(cls, value: object) -> object:
        if isinstance(value, str):
            name = value.strip().lower().lstrip(".")
            if name not in STREAM_FORMATS:
                raise ValueError(f"'{value}' cannot be streamed: choose one of {', '.join(STREAM_FORMATS)}")
            return name
        return value

    @field_validator("normalize", mode="before")
    @classmethod
    def _normalize(cls, value: object) -> object:
        if isinstance(value, str) and value.strip().lower() != "none":
            raise ValueError("a stream cannot be normalised (that needs the whole clip): use POST /generate")
        return value


class GenerateResponse(BaseModel):
    job_id: str = Field(..., description="The job's id (a UUID).")
    status: JobStatus = "queued"


class FieldProblem(BaseModel):
    field: str = Field(..., description="The field to change (`body` for the request as a whole).")
    message: str


class ErrorResponse(BaseModel):
    detail: str = Field(..., description="What went wrong and what to change, in one sentence.")
    errors: list[FieldProblem] | None = Field(None, description="One entry per field, for validation errors.")


class Timings(BaseModel):
    queue_seconds: float | None = Field(None, description="From submission to the start of generation.")
    generation_seconds: float | None = Field(None, description="Wall time of the generation (its batch).")
    real_time_factor: float | None = Field(None, description="Seconds of audio per second of generation.")
    batch_size: int | None = Field(
        None, description="Jobs generated together with this one, itself included."
    )


def iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JobView(BaseModel):
    job_id: str
    status: JobStatus
    progress: float = Field(..., ge=0, le=1)
    queue_position: int | None = Field(None, description="1 = next to run; only while queued.")
    eta_seconds: float | None = Field(None, description="Rough time left while running.")
    audio_url: str | None = Field(None, description="Where the audio is, once completed (until it expires).")
    expired: bool = Field(False, description="The audio was deleted after MUSICGEN_RESULT_TTL.")
    error: str | None = Field(None, description="Why the job failed.")
    cancel_requested: bool = False
    prompt: str
    model: str
    duration: float
    seed: int = Field(..., description="The seed used: the same request with it gives the same audio.")
    temperature: float
    top_k: int
    top_p: float
    guidance_scale: float
    format: str
    normalize: str
    sample_rate: int | None = None
    channels: int | None = None
    timings: Timings
    attempts: int = Field(..., description="Times the job was started (more than 1 after a server restart).")
    created_at: str
    started_at: str | None = None
    finished_at: str | None = None
    expires_at: str | None = Field(None, description="When the audio will be deleted.")

    @classmethod
    def of(cls, job: Job, position: int | None = None, now: float | None = None) -> JobView:
        now = time.time() if now is None else now
        expired = job.is_expired(now)
        eta = None
        if job.status == RUNNING and job.started_at is not None and job.progress > 0.02:
            elapsed = max(now - job.started_at, 0.0)
            eta = round(elapsed / job.progress * (1 - job.progress), 2)
        params = job.params
        return cls(
            job_id=job.id,
            status=job.status,  # type: ignore[arg-type]
            progress=round(job.progress, 4),
            queue_position=position if job.status == QUEUED else None,
            eta_seconds=eta,
            audio_url=f"/audio/{job.audio_file}"
            if job.status == COMPLETED and job.audio_file and not expired
            else None,
            expired=expired,
            error=job.error,
            cancel_requested=job.cancel_requested and job.status == RUNNING,
            prompt=job.prompt,
            model=job.model,
            duration=params.duration,
            seed=job.seed,
            temperature=params.temperature,
            top_k=params.top_k,
            top_p=params.top_p,
            guidance_scale=params.guidance_scale,
            format=job.format,
            normalize=job.normalize,
            sample_rate=job.sample_rate,
            channels=job.channels,
            timings=Timings(
                queue_seconds=_round(job.queue_seconds),
                generation_seconds=_round(job.generation_seconds),
                real_time_factor=_round(job.real_time_factor),
                batch_size=job.batch_size,
            ),
            attempts=job.attempts,
            created_at=iso(job.created_at),  # type: ignore[arg-type]
            started_at=iso(job.started_at),
            finished_at=iso(job.finished_at),
            expires_at=iso(job.expires_at),
        )


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


class JobList(BaseModel):
    jobs: list[JobView]
    total: int = Field(..., description="Jobs matching the filter.")
    limit: int
    offset: int
    next_offset: int | None = Field(None, description="Offset of the next page; null on the last page.")


class DeleteResponse(BaseModel):
    job_id: str
    status: JobStatus = Field(..., description="The job's status after the call.")
    deleted: bool = Field(..., description="True when a finished job and its audio were deleted.")


class Health(BaseModel):
    status: Literal["healthy"] = "healthy"
    service: Literal["musicgen-api"] = "musicgen-api"
    version: str


class Readiness(BaseModel):
    status: Literal["ready", "not ready"]
    model: str = Field(..., description="The default model.")
    detail: str | None = Field(None, description="Why the service is not ready.")
    warmup_seconds: float | None = None
