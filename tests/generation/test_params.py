"""Generation settings: the limits every front end shares, and the arithmetic of a clip's length."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from musicgen_server.generation.params import GenerationParams, clip_shape


def test_defaults_are_musicgens():
    params = GenerationParams()
    assert (params.top_k, params.guidance_scale, params.temperature, params.top_p) == (250, 3.0, 1.0, 0.0)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("duration", 0),
        ("duration", -1),
        ("temperature", 0),
        ("top_k", -1),
        ("top_k", 2049),
        ("top_p", 1.5),
        ("guidance_scale", 0.5),
        ("seed", -1),
        ("seed", 2**63),
    ],
)
def test_out_of_range_values_are_refused(field, value):
    with pytest.raises(ValidationError) as caught:
        GenerationParams(**{field: value})
    assert caught.value.errors()[0]["loc"] == (field,)


def test_unknown_fields_are_refused():
    with pytest.raises(ValidationError):
        GenerationParams(durration=3)


def test_a_missing_seed_is_fixed_once_and_kept():
    fixed = GenerationParams().with_seed()
    assert fixed.seed is not None and fixed.with_seed() is fixed
    assert GenerationParams(seed=5).with_seed().seed == 5


@pytest.mark.parametrize(
    ("duration", "samples", "frames"),
    [(5.0, 160000, 250), (1.0, 32000, 50), (0.37, 11840, 19), (0.01, 320, 4), (30.0, 960000, 1500)],
)
def test_clip_shape(duration, samples, frames):
    shape = clip_shape(duration, 32000, 640, 4)
    assert (shape.samples, shape.frames, shape.steps) == (samples, frames, frames + 3)
    assert shape.frames * 640 >= shape.samples
