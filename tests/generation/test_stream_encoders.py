"""Streaming encoders: WAV with an exact header sent first, raw PCM, Ogg Vorbis drained page by
page; every stream decodes to exactly the samples sent."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
import soundfile as sf

from musicgen_server.errors import InvalidRequestError
from musicgen_server.generation import GenerationParams, GenerationRequest, audio
from musicgen_server.generation.engine import BatchedEngine
from musicgen_server.generation.streaming import encode_stream, stream_encoder

RATE = 32000


def clip(channels: int, samples: int, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((channels, samples)) * 0.2).astype(np.float32)


def tones(channels: int, samples: int) -> np.ndarray:
    time = np.arange(samples) / RATE
    return np.stack([0.3 * np.sin(2 * np.pi * (220 + 110 * c) * time) for c in range(channels)]).astype(
        np.float32
    )


def pieces(samples: np.ndarray, sizes=(1000, 16000, 7, 20000)) -> list[np.ndarray]:
    out, start = [], 0
    for size in sizes:
        out.append(samples[:, start : start + size])
        start += size
    out.append(samples[:, start:])
    return [piece for piece in out if piece.shape[1]]


@pytest.mark.parametrize("channels", [1, 2])
def test_wav_header_is_exact_and_the_file_has_the_same_samples_as_a_written_one(channels):
    samples = clip(channels, 48001)
    encoder = stream_encoder("wav", RATE, channels, total_samples=48001)
    parts = list(encode_stream(pieces(samples), encoder))
    data = b"".join(parts)
    assert len(parts[0]) == 44 and parts[0].startswith(b"RIFF")  # the header goes out first
    assert struct.unpack("<I", data[4:8])[0] == len(data) - 8
    assert struct.unpack("<I", data[40:44])[0] == 48001 * channels * 2 == len(data) - 44
    decoded, rate = sf.read(io.BytesIO(data), dtype="int16", always_2d=True)
    written, _ = sf.read(io.BytesIO(audio.encode(samples, RATE, "wav")), dtype="int16", always_2d=True)
    assert rate == RATE and decoded.shape == (48001, channels)
    assert np.array_equal(decoded, written)


def test_wav_of_unknown_length_uses_the_streaming_sizes_and_still_decodes():
    samples = clip(1, 5000)
    data = b"".join(encode_stream(pieces(samples), stream_encoder("wav", RATE, 1)))
    assert data[4:8] == b"\xff\xff\xff\xff" and data[40:44] == b"\xff\xff\xff\xff"
    decoded, _ = sf.read(io.BytesIO(data), dtype="float32")
    assert decoded.shape == (5000,)


def test_a_wav_stream_cut_short_is_padded_to_its_announced_length():
    data = b"".join(encode_stream([clip(1, 100)], stream_encoder("wav", RATE, 1, total_samples=300)))
    decoded, _ = sf.read(io.BytesIO(data), dtype="float32")
    assert decoded.shape == (300,) and not decoded[100:].any()


def test_pcm_is_interleaved_s16le_with_clipping():
    samples = np.array([[0.0, 0.5, -1.0, 2.0], [1.0, -0.25, -3.0, 0.1]], dtype=np.float32)
    encoder = stream_encoder("pcm", RATE, 2)
    data = b"".join(encode_stream([samples[:, :1], samples[:, 1:]], encoder))
    values = np.frombuffer(data, dtype="<i2").reshape(-1, 2).T
    assert values.tolist() == [[0, 16384, -32768, 32767], [32767, -8192, -32768, 3276]]
    assert encoder.headers["X-Audio-Format"] == "s16le" and encoder.media_type == "application/octet-stream"


@pytest.mark.parametrize("channels", [1, 2])
def test_ogg_pages_come_out_while_streaming_and_decode_to_the_exact_length(channels):
    samples = tones(channels, 3 * RATE + 11)
    encoder = stream_encoder("ogg", RATE, channels)
    produced = []
    for piece in pieces(samples, sizes=(RATE // 2,) * 6):
        produced.append(encoder.encode(piece))
    tail = encoder.finish()
    assert sum(len(p) for p in produced) > 0  # pages before the end of the stream
    data = encoder.start() + b"".join(produced) + tail
    decoded, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    assert rate == RATE and decoded.shape == (3 * RATE + 11, channels)
    for channel in range(channels):  # the same sound, within what Vorbis keeps
        assert np.corrcoef(decoded[:, channel], samples[channel])[0, 1] > 0.99


def test_an_abandoned_ogg_stream_is_closed():
    encoder = stream_encoder("ogg", RATE, 1)
    stream = encode_stream(iter([clip(1, RATE)] * 3), encoder)
    next(stream)
    stream.close()
    assert encoder._file.closed


def test_unknown_formats_are_refused():
    with pytest.raises(InvalidRequestError, match="wav, pcm, ogg"):
        stream_encoder("mp3", RATE, 1)


def test_a_generation_streams_as_a_complete_wav(tiny_model):
    engine = BatchedEngine(tiny_model, max_duration=5)
    try:
        handle = engine.submit(GenerationRequest("calm", GenerationParams(duration=2.3, seed=3)))
        total = round(2.3 * tiny_model.sample_rate)
        encoder = stream_encoder("wav", tiny_model.sample_rate, tiny_model.channels, total_samples=total)
        parts = list(encode_stream(handle.chunks(timeout=60), encoder))
        assert len(parts) >= 3
        decoded, _ = sf.read(io.BytesIO(b"".join(parts)), dtype="float32")
        assert decoded.shape == (total,)
        written, _ = sf.read(
            io.BytesIO(audio.encode(handle.result().samples, tiny_model.sample_rate)), dtype="float32"
        )
        np.testing.assert_array_equal(decoded, written)
    finally:
        engine.close()
