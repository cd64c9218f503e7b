"""The reference engine: transformers' generate() behind the engine's face, exact lengths,
exact seeds, greedy parity with a direct generate() call, progress and cancellation."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from musicgen_server.errors import GenerationCancelled, InvalidRequestError
from musicgen_server.generation import GenerationParams, GenerationRequest
from musicgen_server.generation.reference import ReferenceEngine, undelay


@pytest.fixture(scope="module")
def engine(tiny_model):
    engine = ReferenceEngine(tiny_model, max_batch_size=8)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def stereo_engine(tiny_stereo_model):
    engine = ReferenceEngine(tiny_stereo_model)
    yield engine
    engine.close()


def run(engine, prompt="calm piano with rain", **params):
    return engine.submit(GenerationRequest(prompt, GenerationParams(**params))).result(timeout=60)


@pytest.mark.parametrize("duration", [0.01, 0.37, 1.0, 2.5])
def test_duration_is_exact_to_the_sample(engine, duration):
    clip = run(engine, duration=duration, seed=1)
    assert clip.samples.shape == (1, round(duration * 32000))
    assert clip.samples.dtype == np.float32 and clip.sample_rate == 32000
    assert np.isfinite(clip.samples).all() and np.abs(clip.samples).max() > 0
    assert clip.codes.shape == (4, max(4, int(np.ceil(duration * 50))))


def test_stereo_gives_two_channels(stereo_engine):
    clip = run(stereo_engine, duration=0.5, seed=2)
    assert clip.samples.shape == (2, 16000) and clip.codes.shape == (8, 25)
    assert not np.array_equal(clip.samples[0], clip.samples[1])


def test_same_seed_same_audio_and_other_seed_other_audio(engine):
    first = run(engine, duration=1, seed=42)
    again = run(engine, duration=1, seed=42)
    other = run(engine, duration=1, seed=43)
    assert np.array_equal(first.samples, again.samples)
    assert not np.array_equal(first.codes, other.codes)


def test_a_request_sounds_the_same_alone_or_batched(engine):
    alone = run(engine, "upbeat electronic", duration=1, seed=7)
    handles = [
        engine.submit(GenerationRequest(prompt, GenerationParams(duration=1, seed=seed)))
        for prompt, seed in [("a long prompt about many instruments", 1), ("upbeat electronic", 7), ("x", 3)]
    ]
    together = [handle.result(timeout=60) for handle in handles]
    assert together[1].timings["batch_size"] > 1
    assert np.array_equal(together[1].codes, alone.codes)


def direct_generate_codes(model, prompts, frames, guidance=3.0):
    """Tokens of a plain transformers generate() call with greedy decoding (top_k=1)."""
    inputs = model.processor(text=prompts, padding=True, return_tensors="pt")
    steps = frames + model.codebooks_per_channel - 1
    with torch.inference_mode():
        out = model.model.generate(
            **inputs,
            do_sample=True,
            top_k=1,
            guidance_scale=guidance,
            max_new_tokens=steps,
            return_dict_in_generate=True,
            output_scores=True,
        )
    chosen = torch.stack([s.argmax(-1).view(len(prompts), model.num_codebooks) for s in out.scores])
    return undelay(chosen, model.channels, frames).numpy(), out.sequences.numpy()


@pytest.mark.parametrize("guidance", [3.0, 1.0])
def test_greedy_tokens_equal_a_direct_generate_call(engine, tiny_model, guidance):
    prompts = ["calm piano with rain", "upbeat electronic music with drums"]
    expected, expected_audio = direct_generate_codes(tiny_model, prompts, frames=50, guidance=guidance)
    handles = [
        engine.submit(GenerationRequest(p, GenerationParams(duration=1, top_k=1, guidance_scale=guidance)))
        for p in prompts
    ]
    clips = [handle.result(timeout=60) for handle in handles]
    assert np.array_equal(np.stack([clip.codes for clip in clips]), expected)
    # Same codes, same decoder; only float rounding may differ (other CPU thread counts).
    np.testing.assert_allclose(np.stack([clip.samples for clip in clips]), expected_audio[:, :, :32000], atol=1e-5)


def test_greedy_parity_in_stereo(stereo_engine, tiny_stereo_model):
    expected, _ = direct_generate_codes(tiny_stereo_model, ["calm"], frames=25)
    clip = run(stereo_engine, "calm", duration=0.5, top_k=1)
    assert np.array_equal(clip.codes, expected[0])


def test_progress_reports_every_step(engine):
    seen: list[tuple[int, int]] = []
    handle = engine.submit(GenerationRequest("drums", GenerationParams(duration=0.5, seed=1)))
    handle.add_progress_callback(lambda h: seen.append((h.steps_done, h.steps_total)))
    handle.result(timeout=60)
    done = [steps for steps, _ in seen]
    assert done == sorted(done) and done[-1] == handle.steps_total == 28
    assert handle.progress == 1.0


def test_cancel_stops_within_one_step(engine):
    stop_at = 5
    handle = engine.submit(GenerationRequest("drums", GenerationParams(duration=5, seed=1)))

    def cancel_early(h):
        if h.steps_done >= stop_at:
            h.cancel()

    handle.add_progress_callback(cancel_early)
    with pytest.raises(GenerationCancelled):
        handle.result(timeout=60)
    assert stop_at <= handle.steps_done <= stop_at + 1
    run(engine, duration=0.2, seed=1)  # the engine carries on


def test_cancelling_one_request_leaves_its_batch_mates_alone(engine):
    gate = threading.Event()
    blocker = engine.submit(GenerationRequest("hold", GenerationParams(duration=0.3, seed=1)))
    blocker.add_progress_callback(lambda h: gate.wait(10))  # hold the engine so both queue up
    doomed = engine.submit(GenerationRequest("a", GenerationParams(duration=1, seed=1)))
    kept = engine.submit(GenerationRequest("b", GenerationParams(duration=1, seed=2)))
    doomed.cancel()
    gate.set()
    with pytest.raises(GenerationCancelled):
        doomed.result(timeout=60)
    assert kept.result(timeout=60).samples.shape == (1, 32000)
    blocker.result(timeout=60)


def test_chunks_join_to_the_result(engine):
    handle = engine.submit(GenerationRequest("bass", GenerationParams(duration=0.4, seed=9)))
    joined = np.concatenate(list(handle.chunks(timeout=60)), axis=1)
    assert np.array_equal(joined, handle.result().samples)


def test_requests_over_the_limit_or_empty_are_refused(tiny_model):
    engine = ReferenceEngine(tiny_model, max_duration=2.0)
    try:
        with pytest.raises(InvalidRequestError, match="limit of 2 s"):
            engine.submit(GenerationRequest("x", GenerationParams(duration=2.5)))
        with pytest.raises(InvalidRequestError, match="empty"):
            engine.submit(GenerationRequest("  ", GenerationParams(duration=1)))
    finally:
        engine.close()


def test_the_models_own_limit_caps_the_setting(tiny_model):
    engine = ReferenceEngine(tiny_model, max_duration=1000)
    try:
        assert engine.max_duration == pytest.approx(tiny_model.max_duration)
    finally:
        engine.close()
