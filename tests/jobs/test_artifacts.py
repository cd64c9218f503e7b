"""Audio files of jobs: strict names, paths that stay in the folder, atomic writes, sweeping."""

from __future__ import annotations

import os
import uuid

import numpy as np
import pytest

from musicgen_server.generation import audio
from musicgen_server.jobs.artifacts import ArtifactStore, canonical_id, parse_name

JOB = "3f2b8c1e-7a4d-4e1b-9c2a-0123456789ab"


@pytest.fixture
def artifacts(tmp_path):
    return ArtifactStore(tmp_path / "audio")


def test_names_parse_only_when_canonical():
    assert parse_name(f"{JOB}.wav") == (JOB, "wav")
    assert parse_name(f"{JOB}.mp3") == (JOB, "mp3")
    for bad in [
        f"{JOB.upper()}.wav",
        f"{JOB}.WAV",
        f"{JOB}.aiff",
        f"{JOB}.wav.txt",
        f"{JOB}",
        f"../{JOB}.wav",
        f"{JOB[:-1]}.wav",
        "..%2Fetc%2Fpasswd",
        "/etc/passwd",
        f"{JOB}.wav/",
        f"{JOB}.wav\x00.txt",
        "",
        f"{JOB.replace('-', '')}.wav",
    ]:
        assert parse_name(bad) is None, bad
    assert canonical_id(JOB) == JOB and canonical_id(JOB.upper()) is None and canonical_id("x") is None


def test_put_read_delete(artifacts):
    samples = np.random.default_rng(0).uniform(-0.5, 0.5, (1, 3200)).astype(np.float32)
    name = artifacts.put(JOB, "flac", samples, 32000, tags={"title": "drums"})
    assert name == f"{JOB}.flac"
    path = artifacts.path_for(name)
    assert path.parent == artifacts.folder and path.is_file()
    back, rate = audio.read(path)
    assert back.shape == (1, 3200) and rate == 32000
    assert audio.read_tags(path)["title"] == "drums"
    assert artifacts.names() == [name]
    assert artifacts.delete(name) and not path.exists() and not artifacts.delete(name)
    assert artifacts.path_for("../../etc/passwd") is None
    with pytest.raises(ValueError):
        artifacts.file_name("../x", "wav")


def test_sweep_removes_old_orphans_and_temp_files_only(artifacts):
    live, orphan, fresh = (f"{uuid.uuid4()}.wav" for _ in range(3))
    for name in (live, orphan, fresh, ".x.wav.0a1b.tmp", "notes.txt"):
        (artifacts.folder / name).write_bytes(b"x")
    old = 1_000_000.0
    for name in (live, orphan, ".x.wav.0a1b.tmp", "notes.txt"):
        os.utime(artifacts.folder / name, (old, old))
    removed = artifacts.sweep({live}, older_than=600, now=old + 601)
    assert removed == 2
    assert sorted(p.name for p in artifacts.folder.iterdir()) == sorted([live, fresh, "notes.txt"])
