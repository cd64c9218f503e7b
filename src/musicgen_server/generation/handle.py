"""The engine's face: what `engine.submit()` returns, shared by every engine.

An engine runs in its own thread; a handle is how any other thread (the CLI's progress bar, the
job worker, an HTTP stream) follows one request: progress, cancellation, audio chunks as they
are made, and the final result or error.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from musicgen_server.errors import GenerationCancelled
from musicgen_server.generation.params import GenerationRequest

log = logging.getLogger(__name__)

ProgressCallback = Callable[["GenerationHandle"], None]


@dataclass
class GeneratedAudio:
    """One finished clip. `samples` is float32 shaped (channels, frames); `codes` are the
    EnCodec tokens (codebooks, frames) the audio was decoded from."""

    samples: np.ndarray
    sample_rate: int
    codes: np.ndarray
    seed: int
    prompt: str
    model: str
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def channels(self) -> int:
        return int(self.samples.shape[0])

    @property
    def duration(self) -> float:
        return self.samples.shape[1] / self.sample_rate


class GenerationHandle:
    def __init__(self, request: GenerationRequest, *, model: str, seed: int, steps_total: int):
        self.request = request
        self.model = model
        self.seed = seed
        self.steps_total = steps_total
        self.steps_done = 0
        self.submitted_at = time.time()
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self._cancel = threading.Event()
        self._done = threading.Event()
        self._changed = threading.Condition()
        self._chunks: list[np.ndarray] = []
        self._result: GeneratedAudio | None = None
        self._error: BaseException | None = None
        self._callbacks: list[ProgressCallback] = []

    # -- for callers ------------------------------------------------------------------------
    @property
    def request_id(self) -> str:
        return self.request.request_id

    @property
    def progress(self) -> float:
        if self._result is not None:
            return 1.0
        return min(1.0, self.steps_done / self.steps_total) if self.steps_total else 0.0

    @property
    def cancel_requested(self) -> bool:
        return self._cancel.is_set()

    @property
    def running(self) -> bool:
        return self.started_at is not None and not self._done.is_set()

    def cancel(self) -> None:
        """Ask the engine to drop this request; it stops within one decoder step."""
        self._cancel.set()
        self._notify()

    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)

    def result(self, timeout: float | None = None) -> GeneratedAudio:
        if not self._done.wait(timeout):
            raise TimeoutError(f"generation {self.request_id} not finished after {timeout}s")
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result

    @property
    def error(self) -> BaseException | None:
        return self._error

    def add_progress_callback(self, callback: ProgressCallback) -> None:
        """Called from the engine thread after every step and at the end; keep it quick."""
        self._callbacks.append(callback)

    def chunks(self, timeout: float | None = None) -> Iterator[np.ndarray]:
        """Audio (channels, frames) as it is generated; the chunks joined are the whole clip.
        Ends when the request ends; raises the request's error if it failed or was cancelled."""
        index = 0
        while True:
            with self._changed:
                ready = self._changed.wait_for(
                    lambda: index < len(self._chunks) or self._done.is_set(), timeout=timeout
                )
                if not ready:
                    raise TimeoutError(f"no audio from {self.request_id} for {timeout}s")
                pending = self._chunks[index:]
                finished = self._done.is_set()
            for chunk in pending:
                yield chunk
            index += len(pending)
            if finished and index >= len(self._chunks):
                if self._error is not None:
                    raise self._error
                return

    # -- for engines ------------------------------------------------------------------------
    def mark_started(self) -> None:
        self.started_at = time.time()
        self._notify()

    def advance(self, steps_done: int) -> None:
        self.steps_done = min(steps_done, self.steps_total)
        self._notify()

    def emit_chunk(self, chunk: np.ndarray) -> None:
        with self._changed:
            self._chunks.append(chunk)
            self._changed.notify_all()

    def finish(self, result: GeneratedAudio) -> None:
        self._result = result
        self.steps_done = self.steps_total
        self._end()

    def fail(self, error: BaseException) -> None:
        self._error = error
        self._end()

    def cancelled(self) -> None:
        self.fail(GenerationCancelled(f"generation {self.request_id} was cancelled"))

    def _end(self) -> None:
        self.finished_at = time.time()
        with self._changed:
            self._done.set()
            self._changed.notify_all()
        self._notify()

    def _notify(self) -> None:
        for callback in list(self._callbacks):
            try:
                callback(self)
            except Exception:  # a listener must never break the engine loop
                log.exception("progress callback failed for %s", self.request_id)
