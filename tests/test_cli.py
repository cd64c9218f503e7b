"""`musicgen generate` as a user runs it: a subprocess, real files read back."""

from __future__ import annotations

import numpy as np
import pyloudnorm
import pytest

from musicgen_server.generation import audio
from support import run_cli


def generate(tmp_path, *args, env=None):
    result = run_cli("generate", *args, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    return result


def test_generate_mp3_with_every_sampling_flag(tmp_path, tiny_folder):
    result = generate(
        tmp_path, "calm piano with rain", "--duration", "2", "--model", "tiny", "--seed", "42",
        "--format", "mp3", "-o", "piano.mp3", "--temperature", "0.9", "--top-k", "100",
        "--top-p", "0.95", "--guidance", "2.5",
    )
    samples, rate = audio.read(tmp_path / "piano.mp3")
    assert (samples.shape, rate) == ((1, 64000), 32000)
    assert "piano.mp3" in result.stdout and "seed 42" in result.stdout
    assert "untrained" in result.stderr and "noise" in result.stderr
    tags = audio.read_tags(tmp_path / "piano.mp3")
    assert tags["title"] == "calm piano with rain"
    assert "seed: 42" in tags["comment"] and "tiny" in tags["artist"]


def test_takes_are_reproducible_by_seed(tmp_path, tiny_folder):
    for folder in ("first", "second"):
        (tmp_path / folder).mkdir()
        generate(tmp_path, "drum loop", "-m", "tiny", "-d", "1", "--seed", "5", "--num", "2", "-o", f"{folder}/take.wav")
    first = [audio.read(tmp_path / "first" / f"take-{i}.wav")[0] for i in (1, 2)]
    second = [audio.read(tmp_path / "second" / f"take-{i}.wav")[0] for i in (1, 2)]
    assert all(take.shape == (1, 32000) for take in first)
    assert np.array_equal(first[0], second[0]) and np.array_equal(first[1], second[1])
    assert not np.array_equal(first[0], first[1])  # take 2 is seed 6


def test_stereo_ogg(tmp_path, tiny_stereo_folder):
    generate(tmp_path, "wide synth pad", "-m", "tiny-stereo", "-d", "1.5", "-f", "ogg", "-o", "pad")
    samples, rate = audio.read(tmp_path / "pad.ogg")
    assert (samples.shape, rate) == ((2, 48000), 32000)


def test_flac_with_loudness_normalisation_hits_the_target(tmp_path, tiny_folder):
    generate(
        tmp_path, "ambient", "-m", "tiny", "-d", "3", "-f", "flac", "-o", "loud.flac", "--normalize", "loudness",
        env={"MUSICGEN_LOUDNESS_TARGET": "-20"},
    )
    samples, rate = audio.read(tmp_path / "loud.flac")
    assert samples.shape == (1, 96000)
    loudness = pyloudnorm.Meter(rate).integrated_loudness(samples.T.astype(np.float64))
    assert abs(loudness - -20) < 0.5
    assert np.abs(samples).max() <= 1.0


def test_default_file_name_comes_from_prompt_and_seed(tmp_path, tiny_folder):
    result = generate(tmp_path, "Lo-fi Hip Hop!", "-m", "tiny", "-d", "0.5", "--seed", "9")
    assert (tmp_path / "lo-fi-hip-hop-9.wav").is_file(), result.stdout


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["x", "-d", "0"], "duration"),
        (["x", "-d", "31", "-m", "tiny"], "limit of 30 s"),
        (["x", "--top-p", "2"], "top_p"),
        (["x", "-f", "aiff"], "format 'aiff' is not one of wav, flac, ogg, mp3"),
        (["x", "-m", "huge"], "unknown model 'huge'"),
        (["x", "-m", "large"], "musicgen models pull large"),
        (["   "], "prompt is empty"),
        (["x", "--normalize", "max"], "not one of none, peak, loudness"),
        (["x", "-o", "a.mp3", "-f", "wav"], "make them agree"),
    ],
)
def test_bad_input_exits_non_zero_with_one_line(tmp_path, args, expected, tiny_folder):
    result = run_cli("generate", *args, cwd=tmp_path)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and expected in errors[0], result.stderr
    assert "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_models_list_shows_licence_and_download_state(tiny_folder):
    result = run_cli("models", "list")
    assert result.returncode == 0, result.stderr
    lines = {line.split()[1]: line for line in result.stdout.splitlines() if line.startswith("│")}
    assert "CC-BY-NC-4.0" in lines["small"] and " no " in lines["small"]
    assert " yes " in lines["tiny"] and "noise" in lines["tiny"] and "MB" in lines["tiny"]


def test_models_pull_builds_tiny(tmp_path):
    result = run_cli("models", "pull", "tiny-stereo", env={"MUSICGEN_DATA_DIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "models" / "tiny-stereo" / "model.safetensors").is_file()


def test_models_pull_of_a_missing_model_offline_says_why(tmp_path):
    result = run_cli("models", "pull", "small")
    assert result.returncode == 1
    assert "HF_HUB_OFFLINE" in result.stderr and "Traceback" not in result.stderr
