"""POST /generate/stream against a real server: audio arrives while it is made, decodes to the
exact length, equals the queued job's audio for the same seed, and bad requests are refused."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
import soundfile as sf
from prometheus_client.parser import text_string_to_metric_families

from musicgen_server.generation import audio
from support import start_server, wait_for

WAV_HEADER = 44


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_folder):
    server = start_server(tmp_path_factory.mktemp("stream-server"), tiny_folder=tiny_folder)
    yield server
    server.stop()


def stream(client, **body):
    """(bytes, seconds to the first audio bytes, seconds in all, response headers)."""
    body.setdefault("prompt", "upbeat electronic music")
    started = time.monotonic()
    first = None
    data = bytearray()
    with client.stream("POST", "/generate/stream", json=body) as response:
        assert response.status_code == 200, response.read()
        for piece in response.iter_bytes():
            data += piece
            if first is None and len(data) > WAV_HEADER:
                first = time.monotonic() - started
        headers = response.headers
    return bytes(data), first, time.monotonic() - started, headers


def test_first_audio_arrives_before_half_the_clip_is_made(server):
    with server.client() as client:
        data, first, total, headers = stream(client, duration=30, seed=11)
    assert headers["content-type"] == "audio/wav" and headers["x-seed"] == "11"
    samples, rate = audio.read(data)
    assert (samples.shape, rate) == ((1, 30 * 32000), 32000)
    assert first < total / 2, f"first audio after {first:.2f}s of {total:.2f}s"


def test_a_streamed_clip_equals_the_queued_job_with_the_same_seed(server):
    with server.client() as client:
        data, _, _, _ = stream(client, duration=3, seed=5, prompt="warm strings")
        job = client.post("/generate", json={"prompt": "warm strings", "duration": 3, "seed": 5}).json()["job_id"]
        wait_for(lambda: client.get(f"/status/{job}").json()["status"] == "completed", timeout=60)
        stored = client.get(f"/audio/{job}.wav").content
    assert np.array_equal(audio.read(data)[0], audio.read(stored)[0])


def test_pcm_and_ogg_streams(server):
    with server.client() as client:
        pcm, _, _, headers = stream(client, duration=1.5, seed=2, format="pcm")
        ogg, _, _, ogg_headers = stream(client, duration=1.5, seed=2, format="ogg")
    assert (headers["x-audio-format"], headers["x-audio-sample-rate"], headers["x-audio-channels"]) == (
        "s16le", "32000", "1")
    assert len(pcm) == 48000 * 2
    assert ogg_headers["content-type"] == "audio/ogg"
    decoded, rate = sf.read(io.BytesIO(ogg), dtype="float32")
    assert (decoded.shape, rate) == ((48000,), 32000)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"prompt": "x", "format": "mp3"}, "format"),
        ({"prompt": "x", "normalize": "loudness"}, "normalize"),
        ({"prompt": "", "duration": 1}, "prompt"),
        ({"prompt": "x", "duration": 99}, "duration"),
        ({"prompt": "x", "model": "huge"}, "model"),
    ],
)
def test_bad_streams_are_refused_before_any_audio(server, body, field):
    with server.client() as client:
        response = client.post("/generate/stream", json=body)
    assert response.status_code == 422
    assert field in response.json()["detail"]


def engine_requests(client) -> float:
    """Requests an engine holds, decoding or waiting for a slot."""
    names = ("musicgen_engine_active_requests", "musicgen_engine_pending_requests")
    families = text_string_to_metric_families(client.get("/metrics").text)
    return sum(sample.value for f in families if f.name in names for sample in f.samples)


def test_a_client_that_hangs_up_cancels_the_generation(server):
    with server.client() as client:
        wait_for(lambda: engine_requests(client) == 0, timeout=30, message="an idle engine")
        with client.stream("POST", "/generate/stream", json={"prompt": "long", "duration": 30}) as response:
            next(response.iter_bytes())
            assert engine_requests(client) == 1
        # The rest of those 30 s would take about 2 s more here; a cancelled request leaves at once.
        wait_for(lambda: engine_requests(client) == 0, timeout=1, message="the hung-up stream to stop")
