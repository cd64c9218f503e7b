"""Loading through the Hugging Face cache exactly as a downloaded checkpoint, and failing fast
with a message that says how to get a model that is not there."""

from __future__ import annotations

import hashlib
import shutil
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from support import run_cli
from musicgen_server.errors import ModelNotAvailableError
from musicgen_server.generation import audio
from musicgen_server.models import catalog, hub, load_model
from musicgen_server.models.registry import resolve

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def lay_out_as_hf_cache(folder: Path, hf_home: Path, repo_id: str) -> Path:
    """What `huggingface_hub` writes on download: content-addressed blobs, a snapshot of
    symlinks to them, and refs/main naming the snapshot."""
    repo = hf_home / "hub" / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / COMMIT
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    for path in folder.iterdir():
        data = path.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / path.name).symlink_to(Path("../../blobs") / blob.name)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(COMMIT)
    return snapshot


@pytest.fixture()
def hf_home(tmp_path, tiny_folder, monkeypatch):
    home = tmp_path / "hf"
    lay_out_as_hf_cache(tiny_folder, home, "facebook/musicgen-small")
    return home


def test_small_from_the_hf_cache_offline_through_the_cli(hf_home, tmp_path):
    target = tmp_path / "small.wav"
    result = run_cli(
        "generate", "calm piano", "--model", "small", "--duration", "1", "--seed", "3", "-o", str(target),
        env={"HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 0, result.stderr
    samples, rate = audio.read(target)
    assert (samples.shape, rate) == ((1, 32000), 32000)
    assert "untrained" in result.stderr  # the cached files are tiny's, and the CLI says so


def test_the_cache_lookup_finds_the_snapshot(hf_home, monkeypatch):
    monkeypatch.setattr(hub.constants, "HF_HUB_CACHE", str(hf_home / "hub"))
    folder = hub.cached_snapshot("facebook/musicgen-small")
    assert folder is not None and folder.name == COMMIT
    assert hub.size_on_disk("facebook/musicgen-small") == hub.folder_size(folder)
    assert hub.cached_snapshot("facebook/musicgen-large") is None


def test_catalog_reports_downloaded_models_and_sizes(hf_home, monkeypatch, settings):
    monkeypatch.setattr(hub.constants, "HF_HUB_CACHE", str(hf_home / "hub"))
    entries = {entry.name: entry for entry in catalog.catalog(settings)}
    assert entries["small"].downloaded and entries["small"].size_bytes > 1_000_000
    assert not entries["large"].downloaded and entries["large"].size_bytes is None
    assert entries["large"].license == "CC-BY-NC-4.0"
    assert "noise" in entries["tiny"].notes


def test_missing_model_offline_fails_at_once_with_how_to_get_it(settings, monkeypatch):
    monkeypatch.setattr(hub.constants, "HF_HUB_CACHE", "/nonexistent/hub")
    started = time.monotonic()
    with pytest.raises(ModelNotAvailableError) as caught:
        load_model("large", settings)
    assert time.monotonic() - started < 2
    message = str(caught.value)
    assert "'large'" in message and "facebook/musicgen-large" in message
    assert "musicgen models pull large" in message and "HF_HUB_OFFLINE" in message


@pytest.fixture()
def silent_hub():
    """A server that accepts connections and never answers: the worst network failure."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join()
    for connection in held:
        connection.close()
    server.close()


def test_unreachable_hub_fails_within_seconds_through_the_cli(silent_hub, tmp_path):
    started = time.monotonic()
    result = run_cli(
        "generate", "x", "--model", "medium", "--duration", "1", "-o", str(tmp_path / "x.wav"),
        env={"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": silent_hub, "MUSICGEN_HUB_TIMEOUT": "2"},
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr
    assert "facebook/musicgen-medium" in lines[0] and "musicgen models pull medium" in lines[0]
    assert "Traceback" not in result.stderr
    assert elapsed < 20  # interpreter start-up included; the hub wait itself is 2 s


def test_a_local_folder_loads_like_a_checkpoint(tiny_folder, tmp_path, settings):
    copy = tmp_path / "my-model"
    shutil.copytree(tiny_folder, copy)
    loaded = load_model(str(copy), settings)
    assert loaded.spec.kind == "local" and loaded.folder == copy.resolve()
    assert (loaded.sample_rate, loaded.frame_rate, loaded.num_codebooks, loaded.channels) == (32000, 50, 4, 1)
    assert loaded.hop_length == 640
    assert loaded.max_duration == pytest.approx((2048 - 4) / 50)
    assert not loaded.trained


def test_a_folder_with_another_kind_of_model_is_refused(tmp_path, settings):
    folder = tmp_path / "bert"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "bert"}')
    from musicgen_server.errors import ModelLoadError

    with pytest.raises(ModelLoadError, match="not MusicGen"):
        load_model(str(folder), settings)


def test_device_and_dtype_come_from_settings(settings, tiny_folder):
    loaded = load_model(resolve("tiny"), settings, device="cpu", dtype="bfloat16")
    parameter = next(loaded.model.parameters())
    assert str(parameter.dtype) == "torch.bfloat16" and parameter.device.type == "cpu"
    assert np.isfinite(loaded.weights_bytes)


def test_loads_running_at_once_in_one_process_all_succeed(settings, tiny_folder, tiny_stereo_folder):
    """A server loads its default model while a job starts another: from_pretrained must not
    run twice at once (it fails with "Cannot copy out of meta tensor" when it does)."""
    results, errors = [], []

    def load(name):
        try:
            results.append(load_model(name, settings))
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(repr(error))

    threads = [threading.Thread(target=load, args=(name,)) for name in ("tiny", "tiny-stereo", "tiny", "tiny-stereo")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(model.channels for model in results) == [1, 1, 2, 2]
