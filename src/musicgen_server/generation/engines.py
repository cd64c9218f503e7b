"""Which engine runs a loaded model, and the protocol every engine follows."""

from __future__ import annotations

from typing import Protocol

from musicgen_server.config import Settings
from musicgen_server.generation.handle import GenerationHandle
from musicgen_server.generation.params import GenerationRequest
from musicgen_server.generation.reference import ReferenceEngine
from musicgen_server.models.loading import LoadedModel


class Engine(Protocol):
    name: str
    model: LoadedModel
    max_duration: float
    max_batch_size: int

    def submit(self, request: GenerationRequest) -> GenerationHandle: ...

    @property
    def pending(self) -> int: ...

    @property
    def active(self) -> int: ...

    def close(self, wait: bool = True) -> None: ...


def create_engine(model: LoadedModel, settings: Settings, kind: str | None = None) -> Engine:
    """The engine settings ask for; architectures the batched engine does not run (melody)
    always get the reference engine."""
    kind = kind or settings.engine
    options = dict(
        max_batch_size=settings.max_batch_size,
        max_duration=settings.max_duration,
        cpu_threads=settings.cpu_threads,
    )
    if kind == "batched" and model.architecture == "musicgen":
        from musicgen_server.generation.engine import BatchedEngine

        return BatchedEngine(model, **options)
    return ReferenceEngine(model, **options)
