"""The runner alone: a request's logits are bit-identical whatever shares its step, and the
static-shape step of the CUDA-graph path (run eagerly on CPU) gives transformers' tokens."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from musicgen_server.generation.engine.cuda_graphs import StaticRunner
from musicgen_server.generation.engine.runner import Runner, SlotStep, probe_rows
from musicgen_server.generation.params import GenerationParams, clip_shape

GREEDY = dict(top_k=1, seed=1)


def admit(runner, slot, model, prompt, duration, guidance=3.0):
    shape = clip_shape(duration, model.sample_rate, model.hop_length, model.codebooks_per_channel)
    runner.admit(slot, prompt, GenerationParams(duration=duration, guidance_scale=guidance, **GREEDY), shape.frames)
    return shape


def test_logits_are_bit_identical_alone_or_in_any_batch(tiny_model):
    alone = Runner(tiny_model, max_slots=8, max_steps=80)
    admit(alone, 0, tiny_model, "calm piano with rain", 1.0)
    solo = []
    for step in range(20):
        batch = [SlotStep(0, step, True)]
        solo.append(alone.forward(batch))
        alone.choose(*solo[-1], batch, torch.tensor([step]))

    crowd = Runner(tiny_model, max_slots=8, max_steps=80)
    others = [("drums", 3.0), ("a much longer prompt about strings and brass", 1.0), ("x", 2.0), ("bass", 1.0)]
    for slot, (prompt, guidance) in enumerate(others):
        admit(crowd, slot, tiny_model, prompt, 1.0, guidance)
    steps = {slot: 0 for slot in range(len(others))}

    def run(batch_slots, guided):
        batch = [SlotStep(slot, steps[slot], guided[slot]) for slot in batch_slots]
        out = crowd.forward(batch)
        crowd.choose(*out, batch, torch.tensor([steps[slot] for slot in batch_slots]))
        for slot in batch_slots:
            steps[slot] += 1
        return out

    guided = {0: True, 1: True, 2: False, 3: True, 5: True}
    for _ in range(7):  # the others are well into their clips when ours joins
        run([0, 1, 2, 3], guided)
    admit(crowd, 5, tiny_model, "calm piano with rain", 1.0)
    steps[5] = 0
    for step in range(20):
        running = [0, 1, 2, 3, 5] if step < 12 else [2, 5]  # batch-mates leave part-way
        cond, uncond = run(running, guided)
        ours = running.index(5)
        assert torch.equal(cond[ours], solo[step][0][0]), step
        assert torch.equal(uncond[ours], solo[step][1][0]), step


def test_the_probe_finds_a_padding_that_keeps_rows_invariant(tiny_model):
    runner = Runner(tiny_model, max_slots=4, max_steps=8)
    multiple = probe_rows(runner.parts.linear_shapes(), 8)
    assert multiple == runner.row_multiple and multiple is not None
    weight = runner.parts.layers[0].fc1.weight
    row = torch.randn(weight.shape[1])
    results = []
    for rows in range(multiple, 8 + 1, multiple):
        batch = torch.randn(rows, weight.shape[1])
        batch[rows - 1] = row
        results.append(torch.nn.functional.linear(batch, weight)[rows - 1])
    assert all(torch.equal(result, results[0]) for result in results)


@pytest.mark.parametrize("variant", ["mono", "stereo"])
def test_static_step_gives_generates_tokens(variant, tiny_model, tiny_stereo_model, generate_codes):
    model = tiny_model if variant == "mono" else tiny_stereo_model
    runner = StaticRunner(model, max_slots=4, max_steps=80)
    cases = [("calm piano with rain", 0.9, 3.0), ("upbeat electronic music with drums", 0.5, 1.0), ("x", 0.3, 3.0)]
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
