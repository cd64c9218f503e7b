"""The runner alone: a request's logits are bit-identical whatever shares its step, and the
static-shape step of the CUDA-graph path (run eagerly on CPU) gives transformers' tokens."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from musicgen_server.generation.engine.cuda_graphs import StaticRunner
from musicgen_server.generation.engine.runner import Runner, SlotStep, probe_rows
from musicgen_server.generation.params import GenerationParams, clip_shape

GREEDY = {"top_k": 1, "seed": 1}


def admit(runner, slot, model, prompt, duration, guidance=3.0):
    shape = clip_shape(duration, model.sample_rate, model.hop_length, model.codebooks_per_channel)
    runner.admit(
        slot, prompt, GenerationParams(duration=duration, guidance_scale=guidance, **GREEDY), shape.frames
    )
    return shape


@pytest.mark.parametrize("pack", [True, False], ids=["onednn-packed", "torch-matmul"])
@pytest.mark.parametrize("guided", [True, False])
def test_logits_are_bit_identical_alone_or_in_any_batch(tiny_model, guided, pack):
    """With MKL's GEMM (torch-matmul) this holds only thanks to the probed row padding."""
    guidance = 3.0 if guided else 1.0
    alone = Runner(tiny_model, max_slots=8, max_steps=80, pack_weights=pack)
    admit(alone, 0, tiny_model, "calm piano with rain", 1.0, guidance)
    solo = []
    for step in range(20):
        batch = [SlotStep(0, step, guided)]
        solo.append(alone.forward(batch))
        alone.choose(*solo[-1], batch, torch.tensor([step]))

    crowd = Runner(tiny_model, max_slots=8, max_steps=80, pack_weights=pack)
    others = [
        ("drums", 3.0),
        ("a much longer prompt about strings and brass", 1.0),
        ("x", 2.0),
        ("bass", 1.0),
    ]
    # bass and the long prompt run without guidance: single rows, so the padding is exercised
    for slot, (prompt, scale) in enumerate(others):
        admit(crowd, slot, tiny_model, prompt, 1.0, scale)
    steps = {slot: 0 for slot in range(len(others))}

    def run(batch_slots, guided):
        batch = [SlotStep(slot, steps[slot], guided[slot]) for slot in batch_slots]
        out = crowd.forward(batch)
        crowd.choose(*out, batch, torch.tensor([steps[slot] for slot in batch_slots]))
        for slot in batch_slots:
            steps[slot] += 1
        return out

    flags = {slot: scale > 1 for slot, (_, scale) in enumerate(others)} | {5: guided}
    for _ in range(7):  # the others are well into their clips when ours joins
        run([0, 1, 2, 3], flags)
    admit(crowd, 5, tiny_model, "calm piano with rain", 1.0, guidance)
    steps[5] = 0
    for step in range(20):
        running = [0, 1, 2, 3, 5] if step < 12 else [2, 5]  # batch-mates leave part-way
        cond, uncond = run(running, flags)
        ours = running.index(5)
        assert torch.equal(cond[ours], solo[step][0][0]), step
        assert torch.equal(uncond[ours], solo[step][1][0]), step


def test_the_probe_finds_a_padding_that_keeps_rows_invariant(tiny_model):
    runner = Runner(tiny_model, max_slots=4, max_steps=8)
    multiple = probe_rows(runner.parts.linear_shapes(), 8, runner.linear)
    assert multiple == runner.row_multiple and multiple is not None
    weight = runner.parts.layers[0].fc1.weight
    row = torch.randn(weight.shape[1])
    results = []
    for rows in range(multiple, 8 + 1, multiple):
        for position in (0, rows - 1):
            batch = torch.randn(rows, weight.shape[1])
            batch[position] = row
            results.append(runner.linear(batch, weight)[position])
    assert all(torch.equal(result, results[0]) for result in results)


def test_packed_weights_give_the_same_tokens_as_plain_products(tiny_model):
    """oneDNN with packed weights (the CPU default) and torch's own matmul round differently
    but choose the same greedy codes."""
    codes = []
    for pack in (True, False):
        runner = Runner(tiny_model, max_slots=2, max_steps=60, pack_weights=pack)
        shape = admit(runner, 0, tiny_model, "calm piano with rain", 1.0)
        for step in range(shape.steps):
            runner.step([SlotStep(0, step, True)])
        codes.append(runner.codes(0, 0, shape.frames))
    assert torch.equal(codes[0], codes[1])


@pytest.mark.parametrize("variant", ["mono", "stereo"])
def test_static_step_gives_generates_tokens(variant, tiny_model, tiny_stereo_model, generate_codes):
    model = tiny_model if variant == "mono" else tiny_stereo_model
    runner = StaticRunner(model, max_slots=4, max_steps=80)
    cases = [
        ("calm piano with rain", 0.9, 3.0),
        ("upbeat electronic music with drums", 0.5, 1.0),
        ("x", 0.3, 3.0),
    ]
    plans = {}
    for slot, (prompt, duration, guidance) in enumerate(cases):
        if slot == 1:
            continue
        plans[slot] = [admit(runner, slot, model, prompt, duration, guidance), 0, guidance > 1]
    step_count = 0
    while any(done < shape.steps for shape, done, _ in plans.values()):
        if step_count == 9:  # a late join into slot 1, between two running slots
            prompt, duration, guidance = cases[1]
            plans[1] = [admit(runner, 1, model, prompt, duration, guidance), 0, False]
        batch = [SlotStep(slot, p[1], p[2]) for slot, p in sorted(plans.items()) if p[1] < p[0].steps]
        runner.step(batch)
        for entry in batch:
            plans[entry.slot][1] += 1
        step_count += 1
    for slot, (prompt, _, guidance) in enumerate(cases):
        frames = plans[slot][0].frames
        expected, _ = generate_codes(model, prompt, frames, guidance)
        assert np.array_equal(runner.codes(slot, 0, frames).numpy(), expected), prompt


def test_static_sizes_pad_to_captured_buckets(tiny_model):
    runner = StaticRunner(tiny_model, max_slots=8, max_steps=300)
    assert runner.batch_buckets == [1, 2, 4, 8]
    assert runner.key_buckets == [128, 256, 300]
    batch, keys, text = runner.sizes([SlotStep(0, 3, True), SlotStep(4, 130, False)])
    assert (batch, keys) == (8, 256) and text in runner.text_buckets
    assert runner.sizes([SlotStep(1, 0, True)])[:2] == (2, 128)
