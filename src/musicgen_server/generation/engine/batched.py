"""The continuous-batching engine: one thread per loaded model owns the device and steps every
running request together; requests join and leave the batch at any step.

Each turn of the loop: take new submissions and cancellations, let the scheduler fill free
slots (the runner encodes each newcomer's text and computes its cross-attention keys), run one
decoder step for every running request, then report progress, stream the audio that became
decodable and finish the requests that took their last step. Scheduling decisions use host
integers only (step counts, lengths); the codes stay on the device until a chunk or a result
needs them.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from musicgen_server.generation.engine.codec import StreamDecoder
from musicgen_server.generation.engine.runner import Runner, SlotStep
from musicgen_server.generation.engine.scheduler import Scheduler, Sequence, StepPlan
from musicgen_server.generation.handle import GeneratedAudio, GenerationHandle
from musicgen_server.generation.params import ClipShape, GenerationRequest, clip_shape_for
from musicgen_server.generation.reference import apply_cpu_threads, open_request
from musicgen_server.models.loading import LoadedModel

log = logging.getLogger(__name__)


@dataclass
class _Job:
    handle: GenerationHandle
    shape: ClipShape
    stream: StreamDecoder | None = None
    started: float = 0.0
    chunks: list[np.ndarray] = field(default_factory=list)


class BatchedEngine:
    name = "batched"

    def __init__(
        self,
        model: LoadedModel,
        *,
        max_batch_size: int = 8,
        max_duration: float = 30.0,
        cpu_threads: int | None = None,
    ):
        self.model = model
        self.cpu_threads = cpu_threads
        self.max_batch_size = max_batch_size
        self.max_duration = min(max_duration, model.max_duration)
        self.max_steps = clip_shape_for(model, self.max_duration).steps
        self._incoming: list[Sequence] = []
        self._wakeup = threading.Condition()
        self._closed = False
        self._waiting_count = 0
        self._running_count = 0
        self._ready = threading.Event()
        self._broken: BaseException | None = None
        self.runner = None
        self._thread = threading.Thread(target=self._loop, name=f"engine-batched-{model.name}", daemon=True)
        self._thread.start()

    # -- the engine's face ------------------------------------------------------------------
    def submit(self, request: GenerationRequest) -> GenerationHandle:
        handle, shape = open_request(request, self.model, self.max_duration)
        sequence = Sequence(
            request_id=handle.request_id,
            steps_total=shape.steps,
            guided=handle.request.params.uses_guidance,
            payload=_Job(handle=handle, shape=shape),
        )
        with self._wakeup:
            if self._closed:
                raise RuntimeError(f"engine for {self.model.name} is closed")
            if self._broken is not None:
                raise RuntimeError(f"engine for {self.model.name} failed to start: {self._broken}")
            self._incoming.append(sequence)
            self._wakeup.notify()
        return handle

    @property
    def pending(self) -> int:
        with self._wakeup:
            return len(self._incoming) + self._waiting_count

    @property
    def active(self) -> int:
        return self._running_count

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Block until the engine thread has built its runner (KV cache, probes); submitting
        earlier is fine, the requests simply wait."""
        return self._ready.wait(timeout)

    def close(self, wait: bool = True) -> None:
        """Stop taking requests; waiting ones are cancelled, running ones finish."""
        with self._wakeup:
            self._closed = True
            incoming, self._incoming = self._incoming, []
            self._wakeup.notify_all()
        for sequence in incoming:
            sequence.payload.handle.cancelled()
        if wait and threading.current_thread() is not self._thread:
            self._thread.join()

    # -- the loop ---------------------------------------------------------------------------
    def _make_runner(self):
        if self.model.device.type == "cuda":
            from musicgen_server.generation.engine.cuda_graphs import GraphRunner

            return GraphRunner(self.model, self.max_batch_size, self.max_steps)
        return Runner(self.model, self.max_batch_size, self.max_steps)

    def _loop(self) -> None:
        try:
            apply_cpu_threads(self.model, self.cpu_threads)
            self.runner = self._make_runner()
        except Exception as error:  # no runner, no engine: say why to everyone who asks
            log.exception("batched engine for %s failed to start", self.model.name)
            with self._wakeup:
                self._broken = error
                incoming, self._incoming = self._incoming, []
            for sequence in incoming:
                sequence.payload.handle.fail(error)
            return
        finally:
            self._ready.set()
        scheduler = Scheduler(self.max_batch_size)
        while self._intake(scheduler):
            self._admit(scheduler)
            if not scheduler.running:
                continue
            plan = scheduler.plan()
            try:
                self.runner.step([SlotStep(seq.slot, seq.step, seq.guided) for seq in plan.sequences])
            except Exception as error:  # the model failed: every running request says so
                log.exception("batched step failed on %s", self.model.name)
                for sequence in list(plan.sequences):
                    scheduler.release(sequence)
                    self.runner.release(sequence.slot)
                    sequence.payload.handle.fail(error)
                continue
            done = scheduler.complete(plan)
            self._after_step(scheduler, plan, done)
            self._counts(scheduler)

    def _counts(self, scheduler: Scheduler) -> None:
        self._waiting_count = len(scheduler.waiting)
        self._running_count = len(scheduler.running)

    def _intake(self, scheduler: Scheduler) -> bool:
        """New submissions into the queue, cancellations out; wait while there is nothing to
        do. False once the engine is closed and idle."""
        while True:
            with self._wakeup:
                for sequence in self._incoming:
                    scheduler.add(sequence)
                self._incoming = []
                closed = self._closed
            dropped = []
            for sequence in scheduler.waiting + scheduler.running:
                handle = sequence.payload.handle
                if handle.cancel_requested or handle.done() or (closed and sequence.slot is None):
                    scheduler.release(sequence)
                    if sequence.slot is not None:
                        self.runner.release(sequence.slot)
                    dropped.append(handle)
            for handle in dropped:  # outside the lock: a handle's callbacks may call us
                if not handle.done():
                    handle.cancelled()
            self._counts(scheduler)
            if not scheduler.idle:
                return True
            with self._wakeup:
                if self._incoming:
                    continue
                if self._closed:
                    return False
                self._wakeup.wait()

    def _admit(self, scheduler: Scheduler) -> None:
        for sequence in scheduler.admit():
            job: _Job = sequence.payload
            job.handle.mark_started()
            job.started = time.perf_counter()
            request = job.handle.request
            try:
                self.runner.admit(sequence.slot, request.prompt, request.params, job.shape.frames)
                job.stream = StreamDecoder(self.model, job.shape.frames, job.shape.samples)
            except Exception as error:
                log.exception("could not start %s on %s", request.request_id, self.model.name)
                scheduler.release(sequence)
                self.runner.release(sequence.slot)
                job.handle.fail(error)
        self._counts(scheduler)

    def _after_step(self, scheduler: Scheduler, plan: StepPlan, done: list[Sequence]) -> None:
        finished = {id(sequence) for sequence in done}
        delay = self.runner.parts.max_delay
        for sequence in plan.sequences:
            if sequence.finished and id(sequence) not in finished:
                continue  # cancelled during the step
            job: _Job = sequence.payload
            job.handle.advance(sequence.steps_done)
            available = min(job.shape.frames, max(0, sequence.steps_done - delay))
            try:
                self._stream(sequence, job, available)
                if id(sequence) in finished:
                    self._finish(sequence, job)
            except Exception as error:
                log.exception("decoding %s failed on %s", sequence.request_id, self.model.name)
                scheduler.release(sequence)
                job.handle.fail(error)
            if id(sequence) in finished or job.handle.done():
                self.runner.release(sequence.slot)

    def _stream(self, sequence: Sequence, job: _Job, available: int) -> None:
        if job.stream is None or job.handle.done():
            return
        slot = sequence.slot
        chunk = job.stream.push(lambda start, end: self.runner.codes(slot, start, end), available)
        if chunk is not None:
            job.chunks.append(chunk)
            job.handle.emit_chunk(chunk)

    def _finish(self, sequence: Sequence, job: _Job) -> None:
        model = self.model
        shape = job.shape
        codes = self.runner.codes(sequence.slot, 0, shape.frames).cpu().numpy()
        samples = (
            np.concatenate(job.chunks, axis=1) if job.chunks else np.zeros((model.channels, 0), np.float32)
        )
        elapsed = time.perf_counter() - job.started
        handle = job.handle
        audio_seconds = shape.samples / model.sample_rate
        handle.finish(
            GeneratedAudio(
                samples=samples,
                sample_rate=model.sample_rate,
                codes=codes,
                seed=handle.seed,
                prompt=handle.request.prompt,
                model=model.name,
                timings={
                    "queue_seconds": (handle.started_at or handle.submitted_at) - handle.submitted_at,
                    "generation_seconds": elapsed,
                    "audio_seconds": audio_seconds,
                    "real_time_factor": audio_seconds / elapsed if elapsed > 0 else 0.0,
                    "batch_size": sequence.mean_batch,
                },
            )
        )
