"""Audio files: exact lengths in every format, levels that never clip, tags, atomic writes."""

from __future__ import annotations

import io
import os

import numpy as np
import pyloudnorm
import pytest
import soundfile as sf

from musicgen_server.errors import InvalidRequestError
from musicgen_server.generation import audio

ALL_FORMATS = tuple(audio.FORMATS)
LOSSLESS = ("wav", "flac")
LOSSY = ("ogg", "mp3")
PCM16_STEP = 1.0 / 32768  # one 16-bit quantisation step, as libsndfile reads it back


def music_like(seconds: float, sample_rate: int, channels: int = 1, level: float = 0.3, seed: int = 0):
    """Two tones plus seeded noise: tonal enough for codecs, random enough to locate by correlation."""
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * sample_rate)) / sample_rate
    rows = []
    for channel in range(channels):
        tone = np.sin(2 * np.pi * (220 + 110 * channel) * t) + 0.5 * np.sin(2 * np.pi * 331 * t)
        rows.append(tone + 0.3 * rng.standard_normal(t.size))
    signal = np.stack(rows)
    return (level * signal / np.abs(signal).max()).astype(np.float32)


def lufs(samples: np.ndarray, sample_rate: int) -> float:
    return pyloudnorm.Meter(sample_rate).integrated_loudness(samples.T.astype(np.float64))


def peak_db(samples: np.ndarray) -> float:
    return 20 * np.log10(np.abs(samples).max())


def lag_of(decoded: np.ndarray, original: np.ndarray) -> int:
    """Where the decoded clip sits relative to the original (0 = sample-aligned)."""
    window = min(8000, original.shape[1])
    corr = np.correlate(decoded[0, :window], original[0, :window], mode="full")
    return int(np.argmax(corr)) - (window - 1)


# --- formats --------------------------------------------------------------------------------------


def test_format_table_matches_the_wire_names():
    assert {name: f.media_type for name, f in audio.FORMATS.items()} == {
        "wav": "audio/wav",
        "flac": "audio/flac",
        "ogg": "audio/ogg",
        "mp3": "audio/mpeg",
    }
    assert [f.extension for f in audio.FORMATS.values()] == [".wav", ".flac", ".ogg", ".mp3"]
    assert audio.get_format("WAV") is audio.FORMATS["wav"]
    assert audio.get_format(" Mp3 ") is audio.FORMATS["mp3"]


@pytest.mark.parametrize("name", ["xyz", "aac", "", "wave"])
def test_unknown_format_is_refused_naming_the_valid_ones(name):
    with pytest.raises(InvalidRequestError) as caught:
        audio.get_format(name)
    assert str(caught.value) == f"format {name!r} is not one of wav, flac, ogg, mp3"
    with pytest.raises(InvalidRequestError, match="wav, flac, ogg, mp3"):
        audio.encode(np.zeros(100, np.float32), 32000, name)


@pytest.mark.parametrize(
    ("name", "sf_format", "subtype"),
    [
        ("wav", "WAV", "PCM_16"),
        ("flac", "FLAC", "PCM_16"),
        ("ogg", "OGG", "VORBIS"),
        ("mp3", "MP3", "MPEG_LAYER_III"),
    ],
)
def test_each_format_is_written_as_promised(name, sf_format, subtype):
    info = sf.info(io.BytesIO(audio.encode(music_like(0.2, 32000), 32000, name)))
    assert (info.format, info.subtype) == (sf_format, subtype)


# --- exact lengths --------------------------------------------------------------------------------


# libsndfile 1.2.2 gives back exactly the frames written in every format: Vorbis by its granule
# positions, MP3 by the LAME tag's encoder delay/padding. Lossy formats are also checked to be
# sample-aligned, since a right length shifted by the codec delay would still break the promise.
@pytest.mark.parametrize("fmt", ALL_FORMATS)
@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("sample_rate", [32000, 44100])
@pytest.mark.parametrize("seconds", [1.0, 5.0, 0.37])
def test_round_trip_is_exact_to_the_sample(fmt, channels, sample_rate, seconds):
    original = music_like(seconds, sample_rate, channels)
    decoded, rate = audio.read(audio.encode(original, sample_rate, fmt))
    assert decoded.dtype == np.float32
    assert rate == sample_rate
    assert decoded.shape == original.shape == (channels, round(seconds * sample_rate))
    if fmt in LOSSLESS:
        np.testing.assert_allclose(decoded, original, atol=PCM16_STEP)
    else:
        assert lag_of(decoded, original) == 0
        error = decoded - original
        snr = 10 * np.log10(np.sum(original**2) / np.sum(error**2))
        assert snr > 10, f"{fmt} decodes to something else (SNR {snr:.1f} dB)"


@pytest.mark.parametrize("fmt", ALL_FORMATS)
@pytest.mark.parametrize("frames", [1, 2, 575, 577, 1153, 2304])
def test_odd_lengths_around_codec_frame_sizes_are_exact(fmt, frames):
    original = music_like(1.0, 32000, 2)[:, :frames]
    decoded, _ = audio.read(audio.encode(original, 32000, fmt))
    assert decoded.shape == (2, frames)


def test_one_dimensional_input_is_mono():
    decoded, _ = audio.read(audio.encode(music_like(0.5, 32000)[0], 32000, "flac"))
    assert decoded.shape == (1, 16000)


# --- never clipping -------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", LOSSLESS)
def test_encode_scales_an_over_full_scale_input_instead_of_clipping(fmt):
    loud = 2.5 * music_like(1.0, 32000, 2, level=1.0)
    decoded, _ = audio.read(audio.encode(loud, 32000, fmt))
    assert np.abs(decoded).max() <= 1.0
    # Gain keeps the waveform's shape; clipping would flatten every sample above 1.0.
    np.testing.assert_allclose(decoded, loud / 2.5, atol=2 * PCM16_STEP)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_samples_are_refused(bad):
    samples = music_like(0.5, 32000)
    samples[0, 100] = bad
    with pytest.raises(InvalidRequestError, match="NaN or infinite"):
        audio.encode(samples, 32000, "wav")
    for mode in ("peak", "loudness"):
        with pytest.raises(InvalidRequestError, match="NaN or infinite"):
            audio.normalize(samples, 32000, mode)


def test_mp3_refuses_rates_it_cannot_store():
    with pytest.raises(InvalidRequestError, match="mp3 cannot store 96000 Hz"):
        audio.encode(music_like(0.1, 96000), 96000, "mp3")


def test_empty_audio_is_refused():
    with pytest.raises(InvalidRequestError, match="empty"):
        audio.encode(np.zeros((1, 0), np.float32), 32000, "wav")


# --- normalisation --------------------------------------------------------------------------------


def test_none_returns_the_input_untouched():
    samples = music_like(0.5, 32000, level=0.9)
    assert audio.normalize(samples, 32000, "none") is samples


def test_invalid_mode_names_the_valid_ones():
    with pytest.raises(InvalidRequestError, match="none, peak, loudness"):
        audio.normalize(music_like(0.5, 32000), 32000, "rms")


@pytest.mark.parametrize("ceiling", [-0.1, -1.0, -6.0])
@pytest.mark.parametrize("level", [0.05, 2.0])
def test_peak_normalisation_hits_the_target(ceiling, level):
    out = audio.normalize(music_like(1.0, 32000, 2, level=level), 32000, "peak", peak_dbfs=ceiling)
    assert out.dtype == np.float32 and out.shape == (2, 32000)
    assert abs(peak_db(out) - ceiling) < 0.01


@pytest.mark.parametrize("target", [-14.0, -18.0, -23.0])
@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("fmt", LOSSLESS)
def test_loudness_normalisation_reaches_the_target_in_the_file(target, channels, fmt):
    quiet = music_like(3.0, 32000, channels, level=0.05, seed=channels)
    out = audio.normalize(quiet, 32000, "loudness", target_lufs=target)
    decoded, rate = audio.read(audio.encode(out, 32000, fmt))
    assert abs(lufs(decoded, rate) - target) < 0.5


@pytest.mark.parametrize("ceiling", [-1.0, -3.0])
def test_loudness_normalisation_never_pushes_the_peak_past_the_ceiling(ceiling):
    # Noise with a high crest factor: reaching -6 LUFS would put its peak well above 0 dBFS.
    rng = np.random.default_rng(7)
    noise = (0.1 * rng.standard_normal((2, 64000))).astype(np.float32)
    out = audio.normalize(noise, 32000, "loudness", target_lufs=-6.0, peak_dbfs=ceiling)
    limit = 10 ** (ceiling / 20)
    assert np.abs(out).max() <= limit * (1 + 1e-6)  # float32 rounding of the gain, nothing more
    assert abs(peak_db(out) - ceiling) < 0.01  # the ceiling, not the target, decided the gain
    assert lufs(out, 32000) < -6.0 - 1.0
    decoded, _ = audio.read(audio.encode(out, 32000, "wav"))
    assert np.abs(decoded).max() <= limit + PCM16_STEP


@pytest.mark.parametrize("mode", audio.NORMALIZE_MODES)
def test_silence_is_left_alone(mode):
    silence = np.zeros((2, 32000), np.float32)
    with np.errstate(all="raise"):
        out = audio.normalize(silence, 32000, mode)
    np.testing.assert_array_equal(out, silence)
    for fmt in ALL_FORMATS:
        decoded, _ = audio.read(audio.encode(out, 32000, fmt))
        assert decoded.shape == (2, 32000)
        assert np.abs(decoded).max() == 0.0


def test_audio_too_quiet_to_measure_is_left_alone():
    # One small click in silence: every 400 ms block is below the -70 LUFS gate, loudness is -inf.
    clip = np.zeros((1, 64000), np.float32)
    clip[0, 1000] = 0.01
    out = audio.normalize(clip, 32000, "loudness")
    np.testing.assert_array_equal(out, clip)


def test_audio_shorter_than_a_gating_block_is_only_made_peak_safe():
    short = music_like(0.1, 32000, level=0.2)
    np.testing.assert_array_equal(audio.normalize(short, 32000, "loudness"), short)
    too_hot = music_like(0.1, 32000, level=1.0)
    out = audio.normalize(too_hot, 32000, "loudness", peak_dbfs=-3.0)
    assert abs(peak_db(out) - -3.0) < 0.01


def test_a_ceiling_above_full_scale_is_refused():
    with pytest.raises(InvalidRequestError, match="peak_dbfs"):
        audio.normalize(music_like(0.5, 32000), 32000, "peak", peak_dbfs=1.0)


# --- tags -----------------------------------------------------------------------------------------

PROMPT = "lo-fi hip hop, warm piano ü 音楽 🎵"
TAGS = {
    "title": PROMPT,
    "comment": f"{PROMPT} | seed=1234",
    "artist": "facebook/musicgen-small",
    "software": "musicgen-server 0.1.0",
    "date": "2025-01-31",
    "genre": "Lo-fi",
    "license": "CC-BY-4.0",
    "seed": "1234",  # not a key any format stores: dropped, never an error
}


@pytest.mark.parametrize("fmt", ALL_FORMATS)
def test_tags_read_back_where_the_format_keeps_them(fmt):
    data = audio.encode(music_like(0.5, 32000), 32000, fmt, tags=TAGS)
    found = audio.read_tags(data)
    expected_keys = {"title", "comment", "artist", "software", "date", "genre"}
    if fmt in ("flac", "ogg"):
        expected_keys.add("license")
    assert set(found) == expected_keys
    for key in expected_keys - {"software"}:
        assert found[key] == TAGS[key], key
    # libsndfile appends its own name to "software" in WAV/FLAC/OGG; our ID3 tag keeps it as given.
    assert found["software"].startswith("musicgen-server 0.1.0")


def test_mp3_tags_survive_non_ascii_and_keep_our_software_name():
    found = audio.read_tags(audio.encode(music_like(0.2, 32000), 32000, "mp3", tags=TAGS))
    assert found["title"] == PROMPT
    assert found["software"] == "musicgen-server 0.1.0"


@pytest.mark.parametrize("fmt", ALL_FORMATS)
def test_a_very_long_prompt_does_not_cost_the_other_tags(fmt):
    prompt = "ambient drone with slowly evolving pads ü " * 200  # ~8 KB
    tags = {"title": prompt, "artist": "facebook/musicgen-small"}
    found = audio.read_tags(audio.encode(music_like(0.2, 32000), 32000, fmt, tags=tags))
    assert found["artist"] == "facebook/musicgen-small"
    limit = audio.FORMATS[fmt].tag_limit
    if limit is None:
        assert found["title"] == prompt
    else:
        assert prompt.startswith(found["title"]) and 0 < len(found["title"].encode()) <= limit


@pytest.mark.parametrize("fmt", ALL_FORMATS)
def test_tags_that_cannot_be_encoded_never_fail_the_clip(fmt):
    odd = {"title": "half a surrogate \ud800 and a NUL \x00 here", "artist": None, 7: "x", "date": 2025}
    data = audio.encode(music_like(0.2, 32000), 32000, fmt, tags=odd)
    found = audio.read_tags(data)
    assert found["title"] == "half a surrogate ? and a NUL  here"
    assert found["date"] == "2025"
    assert audio.read(data)[0].shape == (1, 6400)


@pytest.mark.parametrize("fmt", ALL_FORMATS)
def test_no_tags_means_no_metadata(fmt):
    assert audio.read_tags(audio.encode(music_like(0.2, 32000), 32000, fmt, tags={"title": ""})) == {}


# --- files ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ALL_FORMATS)
def test_write_takes_the_format_from_the_suffix_and_leaves_only_the_file(tmp_path, fmt):
    path = audio.write(tmp_path / f"clip.{fmt.upper()}", music_like(0.5, 32000, 2), 32000, tags=TAGS)
    assert os.listdir(tmp_path) == [f"clip.{fmt.upper()}"]
    assert sf.info(path).format == audio.FORMATS[fmt].sf_format
    decoded, rate = audio.read(path)
    assert (decoded.shape, rate) == ((2, 16000), 32000)
    assert audio.read_tags(path)["artist"] == TAGS["artist"]


def test_write_with_an_explicit_format_ignores_the_suffix(tmp_path):
    path = audio.write(tmp_path / "clip.bin", music_like(0.5, 32000), 32000, "ogg")
    assert sf.info(path).format == "OGG"


def test_write_without_a_known_suffix_needs_a_format(tmp_path):
    with pytest.raises(InvalidRequestError, match="wav, flac, ogg, mp3"):
        audio.write(tmp_path / "clip", music_like(0.5, 32000), 32000)
    assert os.listdir(tmp_path) == []


def test_the_final_name_only_appears_complete(tmp_path, monkeypatch):
    target = tmp_path / "clip.wav"
    seen = []
    real_replace = os.replace

    def spying_replace(src, dst):
        seen.append((sorted(os.listdir(tmp_path)), audio.read(src)[0].shape))
        real_replace(src, dst)

    monkeypatch.setattr(audio.os, "replace", spying_replace)
    audio.write(target, music_like(1.0, 32000, 2), 32000)
    [(listing, temp_shape)] = seen
    assert "clip.wav" not in listing  # not visible before it was whole
    assert temp_shape == (2, 32000)  # what gets renamed into place is already complete
    assert os.listdir(tmp_path) == ["clip.wav"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    target = audio.write(tmp_path / "clip.flac", music_like(0.5, 32000), 32000)
    before = target.read_bytes()

    def failing_fsync(fd):
        raise OSError("disk full")

    monkeypatch.setattr(audio.os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="disk full"):
        audio.write(target, music_like(2.0, 32000), 32000)
    assert os.listdir(tmp_path) == ["clip.flac"]
    assert target.read_bytes() == before


def test_reading_garbage_is_an_invalid_request():
    with pytest.raises(InvalidRequestError, match="not a readable audio file"):
        audio.read(b"this is not audio" * 100)


def test_reading_a_missing_file_says_so(tmp_path):
    with pytest.raises(FileNotFoundError):
        audio.read(tmp_path / "nope.wav")
