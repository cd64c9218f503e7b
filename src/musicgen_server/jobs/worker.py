"""The worker: claims jobs from the store and feeds them to the engines, beside the API.

One thread runs the loop; it never touches a tensor and never waits on a model:

- claim: up to `MUSICGEN_MAX_BATCH_SIZE` jobs of a model are in flight at once. Jobs are
  handed to the model's engine as soon as they are claimed, and more are claimed as soon as
  handles finish, so an engine that takes requests at any step (the continuous-batching one)
  is kept full, and the reference engine finds the jobs that waited together pending together
  and runs them as one batch.
- every tick (0.2 s while jobs are in flight): write progress to the store, stop jobs a user
  cancelled (from any process), renew the leases of the jobs held (every lease/4).
- every `MUSICGEN_SWEEP_INTERVAL`: delete expired audio and orphaned files.

Starting a job (loading its model, which can take minutes) happens in a small pool, and so does
finishing one (normalising, encoding and writing the audio), so neither stalls the loop, the
leases or the other models.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from musicgen_server import __version__
from musicgen_server.config import Settings
from musicgen_server.errors import GenerationCancelled, MusicgenError
from musicgen_server.generation import audio
from musicgen_server.generation.generator import MusicGenerator
from musicgen_server.generation.handle import GeneratedAudio, GenerationHandle
from musicgen_server.generation.params import GenerationRequest
from musicgen_server.jobs.artifacts import ArtifactStore
from musicgen_server.jobs.store import CANCELLED, COMPLETED, FAILED, Finished, Job, JobStore

log = logging.getLogger(__name__)

RELEASED = "released"
TICK_SECONDS = 0.2


@dataclass
class JobOutcome:
    """How a job this worker held ended: completed, failed, cancelled or released (back to
    the queue). `job` is the row after the change."""

    status: str
    job: Job


Listener = Callable[[JobOutcome], None]


@dataclass(eq=False)
class _Flight:
    job: Job
    handle: GenerationHandle | None = None
    start_error: str | None = None
    progress: float = 0.0
    written: float = 0.0
    user_cancel: bool = False
    give_back: bool = False
    detached: bool = False  # the row is no longer ours: whatever the handle does is ignored
    ended: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)


def audio_tags(job: Job, result: GeneratedAudio) -> dict[str, str]:
    return {
        "title": job.prompt,
        "artist": f"MusicGen ({result.model})",
        "comment": f"prompt: {job.prompt}; model: {result.model}; seed: {result.seed}; job: {job.id}",
        "software": f"musicgen-server {__version__}",
    }


class Worker:
    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        artifacts: ArtifactStore,
        generator: MusicGenerator,
        *,
        worker_id: str | None = None,
    ):
        self.settings = settings
        self.store = store
        self.artifacts = artifacts
        self.generator = generator
        self.id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._flights: dict[str, _Flight] = {}
        self._lock = threading.Lock()
        self._wakeup = threading.Event()
        self._claim_requested = True
        self._draining = threading.Event()
        self._drained = threading.Event()
        self._stopping = threading.Event()
        self._hurry = threading.Event()
        self._listeners: list[Listener] = []
        self._starter = ThreadPoolExecutor(max_workers=4, thread_name_prefix="job-start")
        self._finisher = ThreadPoolExecutor(max_workers=2, thread_name_prefix="job-finish")
        self._thread: threading.Thread | None = None
        # Seconds of engine time per job, amortised over its batch: for Retry-After estimates.
        self._job_seconds = 5.0

    # -- life -------------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="job-worker", daemon=True)
            self._thread.start()
            log.info("worker %s started", self.id)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def draining(self) -> bool:
        return self._draining.is_set()

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def wake(self) -> None:
        """Look at the queue now (a job was submitted here, or a slot came free)."""
        self._claim_requested = True
        self._wakeup.set()

    def in_flight(self) -> dict[str, int]:
        """Jobs held per model."""
        with self._lock:
            return dict(Counter(flight.job.model for flight in self._flights.values()))

    def estimated_wait(self, queued: int) -> float:
        """A rough guess of how long `queued` waiting jobs take to clear."""
        return queued * self._job_seconds

    def handle(self, job_id: str) -> GenerationHandle | None:
        """The engine's handle of a job this process is running (for streaming its audio as
        it is made), or None when the job is not running here or has not reached its engine."""
        with self._lock:
            flight = self._flights.get(job_id)
        return flight.handle if flight is not None else None

    def cancel(self, job_id: str) -> bool:
        """Stop a job this process runs now, without waiting for the next look at the store."""
        with self._lock:
            flight = self._flights.get(job_id)
        if flight is None:
            return False
        self._cancel_flight(flight)
        return True

    def drain(self, grace: float) -> None:
        """Stop claiming; give jobs that have not started back to the queue; let running jobs
        finish for up to `grace` seconds; give the rest back too. Blocks until done."""
        if self._draining.is_set():
            self._drained.wait()
            return
        self._draining.set()
        with self._lock:
            flights = list(self._flights.values())
        # Running, or done and being written: those get the grace period.
        keep = [f for f in flights if f.ended or (f.handle is not None and f.handle.running)]
        log.info(
            "draining: %d job(s) running get up to %gs to finish, %d not started go back to the queue",
            len(keep),
            grace,
            len(flights) - len(keep),
        )
        for flight in flights:
            if flight not in keep:
                self._detach_and_release(flight)
        self._wait_idle(time.monotonic() + grace)
        with self._lock:
            left = [f for f in self._flights.values() if not f.ended]
        if left:
            log.info("grace period over: %d job(s) go back to the queue", len(left))
        for flight in left:
            self._detach_and_release(flight)
        self._hurry.clear()
        self._wait_idle(time.monotonic() + 10)  # clips already made are still written
        self._drained.set()

    def hurry(self) -> None:
        """End the grace period of a drain now (a second SIGTERM)."""
        self._hurry.set()

    def stop(self, grace: float = 0.0) -> None:
        self.drain(grace)
        self._stopping.set()
        self._wakeup.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)
        self._starter.shutdown(wait=False, cancel_futures=True)
        self._finisher.shutdown(wait=True)

    def _wait_idle(self, deadline: float) -> None:
        while time.monotonic() < deadline and not self._hurry.is_set():
            with self._lock:
                if not self._flights:
                    return
            time.sleep(0.05)

    def _detach_and_release(self, flight: _Flight) -> None:
        """The job goes back to the queue now; its handle is stopped and then ignored."""
        with flight.lock:
            flight.give_back = True
            flight.detached = True
            handle = flight.handle
        if handle is not None:
            handle.cancel()
        job = self.store.release(flight.job.id, self.id)
        self._forget(flight)
        if job is not None:
            self._emit(JobOutcome(RELEASED, job))

    # -- the loop ---------------------------------------------------------------------------
    def _loop(self) -> None:
        next_claim = 0.0
        next_renew = time.monotonic() + self.settings.lease_seconds / 4
        next_sweep = 0.0
        while not self._stopping.is_set():
            now = time.monotonic()
            try:
                renew = now >= next_renew
                self._sync(renew=renew)
                if renew:
                    next_renew = now + self.settings.lease_seconds / 4
                if not self._draining.is_set() and (self._claim_requested or now >= next_claim):
                    self._claim_requested = False
                    self._claim()
                    next_claim = now + self.settings.poll_interval
                if now >= next_sweep:
                    next_sweep = now + self.settings.sweep_interval
                    self.sweep()
            except Exception:  # the database went away for a moment: log, keep going
                log.exception("worker loop error; retrying")
                self._stopping.wait(1.0)
            with self._lock:
                busy = bool(self._flights)
            self._wakeup.wait(TICK_SECONDS if busy else min(self.settings.poll_interval, TICK_SECONDS * 5))
            self._wakeup.clear()

    def _claim(self) -> None:
        held = self.in_flight()
        size = self.settings.max_batch_size
        full = [model for model, count in held.items() if count >= size]
        jobs = self.store.claim(
            self.id,
            capacity=lambda model: size - held.get(model, 0),
            full_models=full,
            lease_seconds=self.settings.lease_seconds,
            max_attempts=self.settings.max_attempts,
            limit=max(32, size * 4),
        )
        by_model: dict[str, list[_Flight]] = {}
        for job in jobs:
            flight = _Flight(job)
            with self._lock:
                self._flights[job.id] = flight
            by_model.setdefault(job.model, []).append(flight)
        for flights in by_model.values():
            self._starter.submit(self._start, flights)

    def _sync(self, *, renew: bool) -> None:
        """Progress to the store, cancellations from it, leases renewed."""
        with self._lock:
            flights = [f for f in self._flights.values() if not f.detached]
        changed = {f.job.id: f.progress for f in flights if f.progress != f.written and not f.ended}
        if changed:
            self.store.set_progress(self.id, changed)
            for flight in flights:
                flight.written = changed.get(flight.job.id, flight.written)
        ids = [f.job.id for f in flights]
        if not ids:
            return
        if renew:
            state = self.store.renew(self.id, ids, lease_seconds=self.settings.lease_seconds)
        else:
            state = self.store.cancel_requests(self.id, ids)
        for flight in flights:
            if flight.ended or flight.detached:
                continue
            if flight.job.id not in state.held:
                # Deleted, or our lease ran out and another worker has it: stop and let go.
                log.warning(
                    "job %s is no longer held by this worker; stopping it",
                    flight.job.id,
                    extra={"job_id": flight.job.id},
                )
                with flight.lock:
                    flight.detached = True
                    handle = flight.handle
                if handle is not None:
                    handle.cancel()
                self._forget(flight)
            elif flight.job.id in state.cancel_requested:
                self._cancel_flight(flight)

    def _cancel_flight(self, flight: _Flight) -> None:
        with flight.lock:
            flight.user_cancel = True
            handle = flight.handle
        if handle is not None:
            handle.cancel()

    def _forget(self, flight: _Flight) -> None:
        with self._lock:
            if self._flights.get(flight.job.id) is flight:
                del self._flights[flight.job.id]
        self.wake()

    # -- starting ---------------------------------------------------------------------------
    def _start(self, flights: list[_Flight]) -> None:
        """Start jobs of one model claimed together: the model is looked up (loaded) first, then
        they are submitted back to back, so the engine finds them waiting together."""
        model = flights[0].job.model
        try:
            self.generator.engine(model)
        except Exception as error:
            if isinstance(error, MusicgenError):
                message = error.message
            else:
                log.exception("model %s could not be loaded", model)
                message = (
                    f"model '{model}' could not be loaded on the server ({type(error).__name__}: {error})"
                )
            for flight in flights:
                flight.start_error = message
                self._ended(flight)
            return
        for flight in flights:
            self._start_one(flight)

    def _start_one(self, flight: _Flight) -> None:
        job = flight.job
        try:
            handle = self._submit(job)
        except MusicgenError as error:
            flight.start_error = error.message
            self._ended(flight)
            return
        except Exception as error:
            log.exception("job %s could not start", job.id, extra={"job_id": job.id})
            flight.start_error = f"the job could not start on the server ({type(error).__name__}: {error})"
            self._ended(flight)
            return
        with flight.lock:
            flight.handle = handle
            stop = flight.user_cancel or flight.give_back or flight.detached
        if stop:
            handle.cancel()
        handle.add_progress_callback(lambda h: self._on_progress(flight, h))
        if handle.done():
            self._on_progress(flight, handle)

    def _submit(self, job: Job) -> GenerationHandle:
        request = GenerationRequest(job.prompt, job.params, request_id=job.id)
        for attempt in range(3):
            engine = self.generator.engine(job.model)
            try:
                return engine.submit(request)
            except RuntimeError:
                # The engine closed between lookup and submit (its model was evicted): the
                # next lookup loads the model again.
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _on_progress(self, flight: _Flight, handle: GenerationHandle) -> None:
        """Called on the engine's thread after every step: record, never block."""
        flight.progress = handle.progress
        if handle.done():
            self._ended(flight)

    def _ended(self, flight: _Flight) -> None:
        with flight.lock:
            if flight.ended:
                return
            flight.ended = True
        try:
            self._finisher.submit(self._finish, flight)
        except RuntimeError:  # shutting down: the lease runs out and the job runs again
            pass

    # -- finishing --------------------------------------------------------------------------
    def _finish(self, flight: _Flight) -> None:
        job = flight.job
        try:
            if flight.detached:
                return
            outcome = self._record(flight)
            if outcome is not None:
                self._emit(outcome)
        except Exception:
            log.exception("recording the end of job %s failed", job.id, extra={"job_id": job.id})
        finally:
            self._forget(flight)

    def _record(self, flight: _Flight) -> JobOutcome | None:
        job = flight.job
        handle = flight.handle
        if handle is None:
            ended = self.store.fail(job.id, self.id, flight.start_error or "the job could not start")
            return JobOutcome(FAILED, ended) if ended else None
        try:
            result = handle.result(timeout=0)
        except GenerationCancelled:
            if flight.user_cancel:
                ended = self.store.mark_cancelled(job.id, self.id)
                return JobOutcome(CANCELLED, ended) if ended else None
            ended = self.store.release(job.id, self.id)  # stopped by a drain or a model eviction
            return JobOutcome(RELEASED, ended) if ended else None
        except MusicgenError as error:
            ended = self.store.fail(job.id, self.id, error.message)
            return JobOutcome(FAILED, ended) if ended else None
        except Exception as error:
            log.error("job %s failed in the engine: %r", job.id, error, extra={"job_id": job.id})
            ended = self.store.fail(
                job.id, self.id, f"generation failed on the server ({type(error).__name__}: {error})"
            )
            return JobOutcome(FAILED, ended) if ended else None
        try:
            finished = self._save(job, handle, result)
        except MusicgenError as error:
            ended = self.store.fail(job.id, self.id, error.message)
            return JobOutcome(FAILED, ended) if ended else None
        ended = self.store.complete(job.id, self.id, finished, ttl=self.settings.result_ttl)
        if ended is None:
            return None
        per_job = finished.generation_seconds / max(finished.batch_size, 1)
        self._job_seconds = 0.8 * self._job_seconds + 0.2 * per_job
        return JobOutcome(COMPLETED, ended)

    def _save(self, job: Job, handle: GenerationHandle, result: GeneratedAudio) -> Finished:
        samples = audio.normalize(
            result.samples, result.sample_rate, job.normalize, target_lufs=self.settings.loudness_target
        )
        name = self.artifacts.put(
            job.id, job.format, samples, result.sample_rate, tags=audio_tags(job, result)
        )
        timings = result.timings or {}
        started = handle.started_at or handle.submitted_at
        ended = handle.finished_at or time.time()
        generation_seconds = float(timings.get("generation_seconds") or max(ended - started, 1e-9))
        return Finished(
            audio_file=name,
            audio_seconds=result.duration,
            sample_rate=result.sample_rate,
            channels=result.channels,
            queue_seconds=max(0.0, started - job.created_at),
            generation_seconds=generation_seconds,
            real_time_factor=result.duration / generation_seconds if generation_seconds > 0 else 0.0,
            batch_size=int(timings.get("batch_size") or 1),
        )

    def _emit(self, outcome: JobOutcome) -> None:
        for listener in list(self._listeners):
            try:
                listener(outcome)
            except Exception:
                log.exception("job listener failed")

    # -- housekeeping -----------------------------------------------------------------------
    def sweep(self) -> None:
        """Delete the audio of expired jobs, then files no job points at."""
        for job in self.store.expire_due():
            self.artifacts.delete(job.audio_file)
        live = self.store.live_audio_files(self.artifacts.names())
        self.artifacts.sweep(live)
