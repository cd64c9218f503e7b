"""The batched engine behind the engine's face: exact durations, progress, cancellation that
frees the slot within one step, streaming while generating, limits, and closing."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from musicgen_server.config import Settings
from musicgen_server.errors import GenerationCancelled, InvalidRequestError
from musicgen_server.generation import GenerationParams, GenerationRequest
from musicgen_server.generation.engine import BatchedEngine
from musicgen_server.generation.engine import codec as codec_module
from musicgen_server.generation.engines import create_engine
from musicgen_server.generation.reference import ReferenceEngine


def request(prompt: str, **params) -> GenerationRequest:
    return GenerationRequest(prompt, GenerationParams(**params))


def test_face_matches_the_reference_engine(engine, tiny_model):
    reference = ReferenceEngine(tiny_model, max_batch_size=8, max_duration=10)
    try:
        face = {name for name in dir(reference) if not name.startswith("_")}
        assert face <= {name for name in dir(engine) if not name.startswith("_")}
        assert engine.name == "batched" and engine.max_batch_size == 8
        assert engine.max_duration == reference.max_duration == 10
        assert engine.pending == 0 and engine.active == 0
    finally:
        reference.close()


@pytest.mark.parametrize("duration", [0.01, 0.37, 1.0, 2.5])
def test_duration_is_exact_to_the_sample(engine, duration):
    clip = engine.submit(request("calm piano with rain", duration=duration, seed=1)).result(timeout=60)
    assert clip.samples.shape == (1, round(duration * 32000))
    assert clip.samples.dtype == np.float32 and clip.sample_rate == 32000
    assert np.isfinite(clip.samples).all() and np.abs(clip.samples).max() > 0
    assert clip.codes.shape == (4, max(4, int(np.ceil(duration * 50))))
    assert set(clip.timings) == {
        "queue_seconds",
        "generation_seconds",
        "audio_seconds",
        "real_time_factor",
        "batch_size",
    }
    assert clip.timings["audio_seconds"] == pytest.approx(duration, abs=1e-4)


def test_progress_reports_every_step(engine):
    seen: list[int] = []
    handle = engine.submit(request("drums", duration=0.5, seed=1))
    handle.add_progress_callback(lambda h: seen.append(h.steps_done))
    handle.result(timeout=60)
    assert seen == sorted(seen) and seen[-1] == handle.steps_total == 28
    assert set(range(1, 29)) <= set(seen)
    assert handle.progress == 1.0


def test_cancel_stops_within_one_step_and_a_waiting_request_takes_the_slot_at_once(tiny_model):
    engine = BatchedEngine(tiny_model, max_batch_size=1, max_duration=10)
    try:
        stop_at = 5
        doomed = engine.submit(request("drums", duration=5, seed=1))
        waiting = engine.submit(request("bass", duration=0.3, seed=2))
        observed: dict = {}

        def cancel_early(h):
            if h.steps_done >= stop_at:
                h.cancel()

        def first_step(h):
            observed.setdefault("doomed_done", doomed.done())
            observed.setdefault("doomed_steps", doomed.steps_done)

        doomed.add_progress_callback(cancel_early)
        waiting.add_progress_callback(first_step)
        with pytest.raises(GenerationCancelled):
            doomed.result(timeout=60)
        assert stop_at <= doomed.steps_done <= stop_at + 1
        assert waiting.result(timeout=60).samples.shape == (1, 9600)
        # The queued request ran its first step right after the cancelled one stopped.
        assert observed == {"doomed_done": True, "doomed_steps": doomed.steps_done}
    finally:
        engine.close()


def test_cancelling_one_request_leaves_its_batch_mates_exact(engine):
    alone = engine.submit(request("b", duration=1, seed=2)).result(timeout=60)
    gate = threading.Event()
    blocker = engine.submit(request("hold", duration=0.3, seed=1))
    blocker.add_progress_callback(lambda h: gate.wait(10))  # hold the engine so both queue up
    doomed = engine.submit(request("a", duration=1, seed=1))
    kept = engine.submit(request("b", duration=1, seed=2))
    doomed.add_progress_callback(lambda h: h.cancel() if h.steps_done == 10 else None)
    gate.set()
    with pytest.raises(GenerationCancelled):
        doomed.result(timeout=60)
    assert np.array_equal(kept.result(timeout=60).codes, alone.codes)
    blocker.result(timeout=60)


def test_a_request_cancelled_while_waiting_never_runs(tiny_model):
    engine = BatchedEngine(tiny_model, max_batch_size=1, max_duration=10)
    try:
        gate = threading.Event()
        first = engine.submit(request("hold", duration=0.5, seed=1))
        first.add_progress_callback(lambda h: gate.wait(10))
        queued = engine.submit(request("never", duration=1, seed=1))
        assert engine.pending >= 1
        queued.cancel()
        gate.set()
        with pytest.raises(GenerationCancelled):
            queued.result(timeout=60)
        assert queued.started_at is None and queued.steps_done == 0
        first.result(timeout=60)
    finally:
        engine.close()


@pytest.mark.parametrize("variant", ["mono", "stereo"])
def test_chunks_stream_while_generating_and_join_to_the_one_shot_decode(
    variant, engine, stereo_engine, tiny_model, tiny_stereo_model
):
    engine, model = (engine, tiny_model) if variant == "mono" else (stereo_engine, tiny_stereo_model)
    handle = engine.submit(request("bass and drums", duration=3.3, seed=9))
    chunks, steps_when_seen = [], []
    for chunk in handle.chunks(timeout=60):
        chunks.append(chunk)
        steps_when_seen.append(handle.steps_done)
    clip = handle.result()
    assert len(chunks) >= 3
    assert steps_when_seen[0] < handle.steps_total // 2  # first audio long before the end
    first_frames = chunks[0].shape[1] // model.hop_length
    assert first_frames == codec_module.FIRST_CHUNK_FRAMES
    joined = np.concatenate(chunks, axis=1)
    assert np.array_equal(joined, clip.samples)  # the result is the stream
    one_shot = codec_module.decode(model, __import__("torch").from_numpy(clip.codes))[
        :, : clip.samples.shape[1]
    ]
    # Measured: ~1e-7 (float rounding); EnCodec without the stream's context is off by ~1e-1.
    np.testing.assert_allclose(joined, one_shot, atol=1e-5)
    assert joined.shape == (model.channels, 105600)


def test_requests_over_the_limit_or_empty_are_refused(tiny_model):
    engine = BatchedEngine(tiny_model, max_duration=2.0)
    try:
        with pytest.raises(InvalidRequestError, match="limit of 2 s"):
            engine.submit(request("x", duration=2.5))
        with pytest.raises(InvalidRequestError, match="empty"):
            engine.submit(request("  ", duration=1))
        assert engine.max_duration == 2.0
    finally:
        engine.close()


def test_the_models_own_limit_caps_the_setting(tiny_model):
    engine = BatchedEngine(tiny_model, max_duration=1000)
    try:
        assert engine.max_duration == pytest.approx(tiny_model.max_duration)
        assert engine.wait_ready(60)
    finally:
        engine.close()


def test_close_cancels_waiting_requests_and_lets_running_ones_finish(tiny_model):
    engine = BatchedEngine(tiny_model, max_batch_size=1, max_duration=10)
    gate = threading.Event()
    running = engine.submit(request("hold", duration=0.5, seed=1))
    started = threading.Event()
    running.add_progress_callback(lambda h: started.set())
    running.add_progress_callback(lambda h: gate.wait(10))
    waiting = engine.submit(request("later", duration=0.5, seed=1))
    assert started.wait(60)  # running (held at its first step), so close() lets it finish
    closer = threading.Thread(target=engine.close)
    closer.start()
    gate.set()
    closer.join(60)
    assert not closer.is_alive()
    assert running.result(timeout=1).samples.shape == (1, 16000)
    with pytest.raises(GenerationCancelled):
        waiting.result(timeout=1)
    with pytest.raises(RuntimeError, match="closed"):
        engine.submit(request("x", duration=0.1))


def test_batched_is_the_default_engine_and_reference_stays_selectable(tiny_model, settings):
    assert Settings().engine == "batched"
    default = create_engine(tiny_model, settings)
    reference = create_engine(tiny_model, settings.model_copy(update={"engine": "reference"}))
    try:
        assert isinstance(default, BatchedEngine) and isinstance(reference, ReferenceEngine)
    finally:
        default.close()
        reference.close()
