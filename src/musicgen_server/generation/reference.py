"""The reference engine: transformers' own `MusicgenForConditionalGeneration.generate()`.

It is the oracle the batched engine is checked against, and the engine for architectures the
batched engine does not run (melody). Requests waiting together with the same length run as one
`generate()` call. Token choice goes through `sampling.sample` inside transformers' loop (as a
logits processor that leaves exactly one code standing), so each request keeps its own seed;
with greedy settings that choice is transformers' own argmax.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import replace

import numpy as np
import torch

from musicgen_server.errors import InvalidRequestError
from musicgen_server.generation.handle import GeneratedAudio, GenerationHandle
from musicgen_server.generation.params import ClipShape, GenerationRequest, clip_shape_for
from musicgen_server.generation.sampling import SamplingSettings, guide, sample
from musicgen_server.models.loading import LoadedModel

log = logging.getLogger(__name__)

# Finite, so transformers' guidance formula (applied after our processor) stays NaN-free.
_LOSER = -1e9


class _BatchCancelled(Exception):
    """Every request of the running batch was cancelled: abandon the generate() call."""


# Below this many weights a decoder step is so small that waking a CPU thread pool for every op
# costs more than it saves: tiny generates 2.5x faster on one thread than on two here, while
# musicgen-small's speed does not change with the thread count (its steps are memory-bound).
_ONE_THREAD_BELOW_BYTES = 200 * 2**20


def apply_cpu_threads(model: LoadedModel, threads: int | None) -> None:
    """Set the engine thread's CPU thread count: as configured, or one for small models."""
    if model.device.type != "cpu":
        return
    if threads is None and model.weights_bytes < _ONE_THREAD_BELOW_BYTES:
        threads = 1
    if threads:
        torch.set_num_threads(threads)


def validate_request(request: GenerationRequest, max_duration: float) -> None:
    if not request.prompt or not request.prompt.strip():
        raise InvalidRequestError("prompt is empty: describe the music you want")
    duration = request.params.duration
    if duration > max_duration + 1e-9:
        raise InvalidRequestError(
            f"duration {duration:g} s is above this model's limit of {max_duration:g} s: ask for less"
        )


def open_request(
    request: GenerationRequest, model: LoadedModel, max_duration: float
) -> tuple[GenerationHandle, ClipShape]:
    """What every engine does on submit: validate, fix the seed (so it can be reported), size
    the clip, and make the handle the caller follows."""
    validate_request(request, max_duration)
    request = replace(request, params=request.params.with_seed())
    shape = clip_shape_for(model, request.params.duration)
    handle = GenerationHandle(request, model=model.name, seed=request.params.seed, steps_total=shape.steps)
    return handle, shape


class _ChooseCodes:
    """A logits processor that picks every request's next codes with its own settings and seed,
    records them, reports progress and honours cancellation within one step."""

    def __init__(self, handles: list[GenerationHandle], model: LoadedModel, device: torch.device):
        self.handles = handles
        self.codebooks = model.num_codebooks
        self.settings = SamplingSettings.from_params([h.request.params for h in handles], device)
        self.steps: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        live = [h for h in self.handles if not h.done()]
        for handle in live:
            if handle.cancel_requested:
                handle.cancelled()
        if all(h.done() for h in self.handles):
            raise _BatchCancelled()
        batch = len(self.handles)
        rows = batch * self.codebooks
        vocab = scores.shape[-1]
        cond = scores[:rows].view(batch, self.codebooks, vocab)
        uncond = scores[rows:].view(batch, self.codebooks, vocab) if scores.shape[0] > rows else None
        logits = guide(cond, uncond, self.settings.guidance)
        step = len(self.steps)
        steps = torch.full((batch,), step, dtype=torch.int64, device=scores.device)
        codes = sample(logits, self.settings, steps)
        self.steps.append(codes)
        for handle in self.handles:
            if not handle.done():
                handle.advance(step + 1)
        chosen = torch.full_like(scores, _LOSER)
        flat = codes.reshape(-1, 1)
        chosen[:rows].scatter_(1, flat, 0.0)
        if uncond is not None:
            chosen[rows:].scatter_(1, flat, 0.0)
        return chosen


def undelay(steps: torch.Tensor, channels: int, frames: int) -> torch.Tensor:
    """Codes (B, K, frames) from the per-step choices (steps, B, K): codebook k of a channel
    lags k steps, so frame f of codebook k was chosen at step f + k."""
    # Stereo checkpoints interleave left and right codebooks, which share a delay.
    columns = [steps[k // channels : k // channels + frames, :, k] for k in range(steps.shape[2])]
    return torch.stack(columns, dim=0).permute(2, 0, 1)


class ReferenceEngine:
    name = "reference"

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
        self._pending: list[tuple[GenerationHandle, ClipShape]] = []
        self._running: list[GenerationHandle] = []
        self._wakeup = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name=f"engine-ref-{model.name}", daemon=True)
        self._thread.start()

    # -- the engine's face ------------------------------------------------------------------
    def submit(self, request: GenerationRequest) -> GenerationHandle:
        handle, shape = open_request(request, self.model, self.max_duration)
        with self._wakeup:
            if self._closed:
                raise RuntimeError(f"engine for {self.model.name} is closed")
            self._pending.append((handle, shape))
            self._wakeup.notify()
        return handle

    @property
    def pending(self) -> int:
        with self._wakeup:
            return len(self._pending)

    @property
    def active(self) -> int:
        return len(self._running)

    def close(self, wait: bool = True) -> None:
        """Stop taking requests; pending ones are cancelled, the running batch finishes."""
        with self._wakeup:
            self._closed = True
            pending, self._pending = self._pending, []
            self._wakeup.notify_all()
        for handle, _ in pending:
            handle.cancelled()
        if wait and threading.current_thread() is not self._thread:
            self._thread.join()

    # -- the loop ---------------------------------------------------------------------------
    def _take_batch(self) -> list[tuple[GenerationHandle, ClipShape]] | None:
        with self._wakeup:
            while True:
                for handle, _ in [item for item in self._pending if item[0].cancel_requested]:
                    handle.cancelled()
                self._pending = [item for item in self._pending if not item[0].done()]
                if self._pending:
                    break
                if self._closed:
                    return None
                self._wakeup.wait()
            steps = self._pending[0][1].steps
            batch = [item for item in self._pending if item[1].steps == steps][: self.max_batch_size]
            self._pending = [item for item in self._pending if item not in batch]
            return batch

    def _loop(self) -> None:
        apply_cpu_threads(self.model, self.cpu_threads)
        while True:
            batch = self._take_batch()
            if batch is None:
                return
            handles = [handle for handle, _ in batch]
            self._running = handles
            try:
                self._run(handles, batch[0][1])
            except _BatchCancelled:
                pass
            except Exception as error:  # the model failed: every request of the batch says so
                log.exception("generation failed on %s", self.model.name)
                for handle in handles:
                    if not handle.done():
                        handle.fail(error)
            finally:
                self._running = []

    @torch.inference_mode()
    def _run(self, handles: list[GenerationHandle], shape: ClipShape) -> None:
        model = self.model
        started = time.perf_counter()
        for handle in handles:
            handle.mark_started()
        inputs = model.processor(
            text=[h.request.prompt for h in handles], padding=True, truncation=True, return_tensors="pt"
        ).to(model.device)
        chooser = _ChooseCodes(handles, model, model.device)
        # transformers only takes argmax over the one code the chooser leaves standing, and
        # doubles the batch for guidance when some request uses it.
        guidance = max(h.request.params.guidance_scale for h in handles)
        output = model.model.generate(
            **inputs,
            do_sample=False,
            guidance_scale=guidance,
            max_new_tokens=shape.steps,
            logits_processor=[chooser],
        )
        audio = output.float().cpu().numpy()[:, :, : shape.samples]
        codes = undelay(torch.stack(chooser.steps), model.channels, shape.frames).cpu().numpy()
        elapsed = time.perf_counter() - started
        for index, handle in enumerate(handles):
            if handle.done():
                continue
            clip = np.ascontiguousarray(audio[index], dtype=np.float32)
            handle.emit_chunk(clip)
            handle.finish(
                GeneratedAudio(
                    samples=clip,
                    sample_rate=model.sample_rate,
                    codes=codes[index],
                    seed=handle.seed,
                    prompt=handle.request.prompt,
                    model=model.name,
                    timings=_timings(handle, elapsed, shape, model.sample_rate, len(handles)),
                )
            )


def _timings(handle: GenerationHandle, elapsed: float, shape: ClipShape, rate: int, batch: int) -> dict:
    audio_seconds = shape.samples / rate
    return {
        "queue_seconds": (handle.started_at or handle.submitted_at) - handle.submitted_at,
        "generation_seconds": elapsed,
        "audio_seconds": audio_seconds,
        "real_time_factor": audio_seconds / elapsed if elapsed > 0 else 0.0,
        "batch_size": float(batch),
    }
