"""Engines on the tiny models and the oracle: tokens of a plain transformers generate() call."""

from __future__ import annotations

import pytest
import torch

from musicgen_server.generation.engine import BatchedEngine
from musicgen_server.generation.reference import undelay


@pytest.fixture(scope="module")
def engine(tiny_model):
    engine = BatchedEngine(tiny_model, max_batch_size=8, max_duration=10)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def stereo_engine(tiny_stereo_model):
    engine = BatchedEngine(tiny_stereo_model, max_batch_size=4, max_duration=10)
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def generate_codes():
    """Greedy (top_k=1) tokens of `generate()` for prompts alone, one call per prompt: what each
    request must get from the batched engine whatever its batch-mates."""
    cache: dict = {}

    def run(model, prompt: str, frames: int, guidance: float = 3.0):
        key = (model.name, prompt, frames, guidance)
        if key not in cache:
            inputs = model.processor(text=[prompt], padding=True, return_tensors="pt")
            with torch.inference_mode():
                out = model.model.generate(
                    **inputs,
                    do_sample=True,
                    top_k=1,
                    guidance_scale=guidance,
                    max_new_tokens=frames + model.codebooks_per_channel - 1,
                    return_dict_in_generate=True,
                    output_scores=True,
                )
            chosen = torch.stack([s.argmax(-1).view(1, model.num_codebooks) for s in out.scores])
            cache[key] = (undelay(chosen, model.channels, frames).numpy()[0], out.sequences.numpy()[0])
        return cache[key]

    return run
