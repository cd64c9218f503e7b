"""Token choice: guidance as transformers computes it, per-request top-k/top-p/temperature, and
randomness keyed by (seed, step) alone so batch-mates never change a request's audio."""

from __future__ import annotations

import torch
from transformers.generation.logits_process import ClassifierFreeGuidanceLogitsProcessor

from musicgen_server.generation.params import GenerationParams
from musicgen_server.generation.sampling import SamplingSettings, guide, sample, uniforms


def settings_for(*params: GenerationParams) -> SamplingSettings:
    return SamplingSettings.from_params(list(params), "cpu")


def test_uniforms_depend_only_on_seed_step_and_codebook():
    seeds = torch.tensor([1, 2, 1], dtype=torch.int64)
    steps = torch.tensor([0, 0, 0], dtype=torch.int64)
    values = uniforms(seeds, steps, 4)
    assert values.shape == (3, 4)
    assert torch.equal(values[0], values[2]) and not torch.equal(values[0], values[1])
    assert len(set(values[0].tolist())) == 4  # codebooks differ
    later = uniforms(seeds, steps + 1, 4)
    assert not torch.equal(values, later)
    alone = uniforms(torch.tensor([2]), torch.tensor([0]), 4)
    assert torch.equal(alone[0], values[1])


def test_uniforms_are_uniform():
    seeds = torch.arange(20000, dtype=torch.int64)
    values = uniforms(seeds, torch.zeros_like(seeds), 2).flatten()
    assert values.min() >= 0 and values.max() < 1
    histogram = torch.histc(values, bins=10, min=0, max=1)
    assert (histogram - 4000).abs().max() < 300


def test_guidance_matches_transformers_bit_for_bit():
    torch.manual_seed(0)
    cond, uncond = torch.randn(2, 4, 2048), torch.randn(2, 4, 2048)
    ours = guide(cond, uncond, torch.tensor([3.0, 3.0]))
    theirs = ClassifierFreeGuidanceLogitsProcessor(3.0)(
        torch.zeros(8, 1, dtype=torch.long), torch.cat([cond.view(8, -1), uncond.view(8, -1)])
    )
    assert torch.equal(ours.view(8, -1), theirs)
    untouched = guide(cond, uncond, torch.tensor([1.0, 3.0]))
    assert torch.equal(untouched[0], cond[0]) and torch.equal(untouched[1], ours[1])


def test_top_k_one_is_argmax_whatever_the_seed():
    torch.manual_seed(1)
    logits = torch.randn(3, 4, 2048)
    params = [GenerationParams(top_k=1, seed=s, temperature=t) for s, t in [(0, 1.0), (7, 5.0), (99, 0.1)]]
    codes = sample(logits, settings_for(*params), torch.tensor([0, 5, 9]))
    assert torch.equal(codes, logits.argmax(-1))


def test_top_k_keeps_codes_among_the_k_best():
    torch.manual_seed(2)
    logits = torch.randn(1, 4, 2048)
    best = logits.topk(5, dim=-1).indices
    for step in range(50):
        codes = sample(logits, settings_for(GenerationParams(top_k=5, seed=3)), torch.tensor([step]))
        assert all(codes[0, c] in best[0, c] for c in range(4))


def test_top_p_keeps_the_nucleus():
    logits = torch.full((1, 1, 2048), -30.0)
    logits[0, 0, 10], logits[0, 0, 20], logits[0, 0, 30] = 5.0, 4.0, 0.0  # ~0.73, ~0.27, ~0.005
    params = GenerationParams(top_k=0, top_p=0.9, seed=1)
    seen = {int(sample(logits, settings_for(params), torch.tensor([s]))[0, 0]) for s in range(200)}
    assert seen == {10, 20}


def test_a_request_samples_the_same_alone_or_in_a_batch():
    torch.manual_seed(3)
    logits = torch.randn(3, 4, 2048)
    params = [GenerationParams(seed=11), GenerationParams(seed=12, top_k=50), GenerationParams(seed=13, top_p=0.8)]
    together = sample(logits, settings_for(*params), torch.tensor([4, 9, 2]))
    for row in range(3):
        alone = sample(logits[row : row + 1], settings_for(params[row]), torch.tensor([[4, 9, 2][row]]))
        assert torch.equal(alone[0], together[row])


def test_different_seeds_choose_differently():
    logits = torch.zeros(2, 4, 2048)  # uniform: the seed decides everything
    codes = sample(logits, settings_for(GenerationParams(seed=1), GenerationParams(seed=2)), torch.tensor([0, 0]))
    assert not torch.equal(codes[0], codes[1])
