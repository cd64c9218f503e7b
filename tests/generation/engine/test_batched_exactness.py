"""The batched engine is exact: greedy tokens equal transformers' generate() for each request
alone, whatever the batch around it (prompts, text lengths, durations, guidance, join times);
and a seed gives the same codes and audio alone, beside others, or joined late."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from musicgen_server.generation import GenerationParams, GenerationRequest
from musicgen_server.generation.reference import ReferenceEngine

MIXED = [
    # prompt, duration, guidance
    ("calm piano with rain", 1.0, 3.0),
    ("upbeat electronic music with drums and a deep bass line in the background", 0.62, 3.0),
    ("x", 0.3, 1.0),
    ("lofi hip hop beat", 1.4, 5.0),
    ("epic orchestra", 0.5, 1.0),
]


def request(prompt: str, **params) -> GenerationRequest:
    return GenerationRequest(prompt, GenerationParams(**params))


def frames_of(clip) -> int:
    return clip.codes.shape[1]


def submit_when(handle, step: int, action) -> threading.Event:
    """Run `action` from the engine thread once `handle` has taken `step` steps (so a request
    joins the running batch at a known step)."""
    fired = threading.Event()

    def callback(h):
        if h.steps_done >= step and not fired.is_set():
            fired.set()
            action()

    handle.add_progress_callback(callback)
    return fired


@pytest.mark.parametrize("variant", ["mono", "stereo"])
def test_greedy_tokens_equal_generate_for_a_mixed_batch(variant, request_model, generate_codes):
    engine, model = request_model(variant)
    handles = [
        engine.submit(request(prompt, duration=duration, top_k=1, guidance_scale=guidance, seed=i))
        for i, (prompt, duration, guidance) in enumerate(MIXED)
    ]
    clips = [handle.result(timeout=120) for handle in handles]
    assert max(clip.timings["batch_size"] for clip in clips) > 2  # they really ran together
    for (prompt, _, guidance), clip in zip(MIXED, clips):
        expected, _ = generate_codes(model, prompt, frames_of(clip), guidance)
        assert np.array_equal(clip.codes, expected), prompt


@pytest.mark.parametrize("variant", ["mono", "stereo"])
def test_greedy_tokens_equal_generate_with_staggered_joins(variant, request_model, generate_codes):
    engine, model = request_model(variant)
    handles: list = []

    def join(prompt, duration, guidance):
        return lambda: handles.append(
            engine.submit(request(prompt, duration=duration, top_k=1, guidance_scale=guidance))
        )

    first = engine.submit(request(MIXED[0][0], duration=MIXED[0][1], top_k=1, guidance_scale=MIXED[0][2]))
    handles.append(first)
    joined = [submit_when(first, step, join(*MIXED[i])) for step, i in [(7, 1), (19, 2), (30, 3)]]
    first.result(timeout=120)
    assert all(event.wait(30) for event in joined)
    clips = [handle.result(timeout=120) for handle in handles]
    assert [clip.prompt for clip in clips] == [MIXED[i][0] for i in range(4)]
    for (prompt, _, guidance), clip in zip(MIXED, clips):
        expected, _ = generate_codes(model, prompt, frames_of(clip), guidance)
        assert np.array_equal(clip.codes, expected), prompt


def test_greedy_audio_matches_generate_within_float_rounding(engine, tiny_model, generate_codes):
    clip = engine.submit(request("calm piano with rain", duration=1.0, top_k=1)).result(timeout=60)
    expected_codes, expected_audio = generate_codes(tiny_model, "calm piano with rain", 50)
    assert np.array_equal(clip.codes, expected_codes)
    np.testing.assert_allclose(clip.samples, expected_audio[:, :32000], atol=1e-5)


SAMPLED = {"duration": 1.0, "seed": 1234}  # MusicGen's defaults: top_k 250, temperature 1, guidance 3


def test_a_seed_gives_the_same_codes_alone_beside_others_or_joined_late(engine):
    alone = engine.submit(request("warm jazz piano", **SAMPLED)).result(timeout=60)

    others = [
        request("a long prompt about many many instruments playing together", duration=1.6, seed=1),
        request("drums", duration=0.4, seed=2, top_k=50),
        request("synth pad", duration=1.2, seed=3, top_p=0.9, top_k=0),
        request("bass", duration=0.8, seed=4, guidance_scale=1.0, temperature=0.7),
    ]
    handles = [engine.submit(r) for r in others[:2]]
    beside = engine.submit(request("warm jazz piano", **SAMPLED))
    handles += [engine.submit(r) for r in others[2:]]
    together = beside.result(timeout=60)
    assert together.timings["batch_size"] > 3

    late_handles: list = []
    host = engine.submit(request("ambient drone", duration=2.0, seed=5))
    fired = submit_when(
        host, 40, lambda: late_handles.append(engine.submit(request("warm jazz piano", **SAMPLED)))
    )
    host.result(timeout=60)
    assert fired.wait(30)
    late = late_handles[0].result(timeout=60)

    for clip in (together, late):
        assert np.array_equal(clip.codes, alone.codes)
        assert np.array_equal(clip.samples, alone.samples)
    for handle in handles:
        handle.result(timeout=60)
    other = engine.submit(request("warm jazz piano", duration=1.0, seed=1235)).result(timeout=60)
    assert not np.array_equal(other.codes, alone.codes)


def test_stereo_seed_identity_alone_and_batched(stereo_engine):
    alone = stereo_engine.submit(request("calm", duration=0.8, seed=9)).result(timeout=60)
    handles = [
        stereo_engine.submit(request(p, duration=d, seed=s))
        for p, d, s in [("rock", 1.2, 1), ("calm", 0.8, 9)]
    ]
    together = [h.result(timeout=60) for h in handles][1]
    assert together.timings["batch_size"] > 1
    assert np.array_equal(together.codes, alone.codes) and np.array_equal(together.samples, alone.samples)
    assert alone.samples.shape == (2, 25600) and alone.codes.shape == (8, 40)


def test_sampling_equals_the_reference_engine_for_the_same_seeds(engine, tiny_model):
    reference = ReferenceEngine(tiny_model)
    try:
        cases = [
            ("calm piano", {"duration": 0.8, "seed": 21}),
            ("drums", {"duration": 0.8, "seed": 22, "top_p": 0.8}),
        ]
        ours = [engine.submit(request(p, **kw)) for p, kw in cases]
        theirs = [reference.submit(request(p, **kw)) for p, kw in cases]
        for mine, ref in zip(ours, theirs):
            a, b = mine.result(timeout=60), ref.result(timeout=60)
            assert np.array_equal(a.codes, b.codes)
            np.testing.assert_allclose(a.samples, b.samples, atol=1e-5)
    finally:
        reference.close()


@pytest.fixture
def request_model(engine, stereo_engine, tiny_model, tiny_stereo_model):
    return lambda variant: (engine, tiny_model) if variant == "mono" else (stereo_engine, tiny_stereo_model)
