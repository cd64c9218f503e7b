"""Streamed EnCodec decoding: chunks as frames complete, joined equal to the one-shot decode
within float rounding, exact in length."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from musicgen_server.generation.engine import codec


def stream(model, codes: torch.Tensor, samples: int, every: int = 1) -> list[np.ndarray]:
    frames = codes.shape[1]
    decoder = codec.StreamDecoder(model, frames, samples)
    chunks = []
    for available in [*range(0, frames, every), frames]:
        chunk = decoder.push(lambda start, end: codes[:, start:end], available)
        if chunk is not None:
            chunks.append(chunk)
    assert decoder.done
    return chunks


@pytest.fixture(params=["mono", "stereo"])
def model(request, tiny_model, tiny_stereo_model):
    return tiny_model if request.param == "mono" else tiny_stereo_model


def random_codes(model, frames: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2048, (model.num_codebooks, frames), generator=generator)


@pytest.mark.parametrize("every", [1, 7])
def test_joined_stream_equals_the_one_shot_decode(model, every):
    codes = random_codes(model, 187)
    samples = 187 * 640 - 123
    chunks = stream(model, codes, samples, every)
    one_shot = codec.decode(model, codes)[:, :samples]
    joined = np.concatenate(chunks, axis=1)
    assert joined.shape == one_shot.shape == (model.channels, samples)
    # Measured on tiny: 1.2e-7 (mono), 9e-8 (stereo): float rounding of differently sized convolutions.
    np.testing.assert_allclose(joined, one_shot, atol=1e-5, rtol=0)
    sizes = [chunk.shape[1] // 640 for chunk in chunks[:-1]]
    assert all(size >= codec.CHUNK_FRAMES for size in sizes[1:])
    assert sizes[0] == codec.FIRST_CHUNK_FRAMES if every == 1 else sizes[0] >= codec.FIRST_CHUNK_FRAMES


def test_without_upsampling_context_the_stream_is_wrong(tiny_model, monkeypatch):
    """The context is what makes the stream exact (so the tolerance above means something)."""
    codes = random_codes(tiny_model, 120, seed=3)
    one_shot = codec.decode(tiny_model, codes)
    monkeypatch.setattr(codec, "UPSAMPLE_CONTEXT", 0)
    joined = np.concatenate(stream(tiny_model, codes, 120 * 640), axis=1)
    assert np.abs(joined - one_shot).max() > 1e-3


def test_clips_shorter_than_a_chunk_come_in_one_piece_of_exact_length(tiny_model):
    codes = random_codes(tiny_model, 4, seed=1)
    chunks = stream(tiny_model, codes, 320)
    assert len(chunks) == 1 and chunks[0].shape == (1, 320)
    np.testing.assert_allclose(chunks[0], codec.decode(tiny_model, codes)[:, :320], atol=1e-5, rtol=0)


def test_a_codec_of_another_layout_is_decoded_once_at_the_end(tiny_model, monkeypatch):
    monkeypatch.setattr(codec, "streamable", lambda _: False)
    codes = random_codes(tiny_model, 90, seed=2)
    chunks = stream(tiny_model, codes, 90 * 640)
    assert len(chunks) == 1
    assert np.array_equal(chunks[0], codec.decode(tiny_model, codes))


def test_musicgen_codecs_are_streamable(tiny_model, tiny_stereo_model):
    assert codec.streamable(tiny_model.model.audio_encoder)
    assert codec.streamable(tiny_stereo_model.model.audio_encoder)
