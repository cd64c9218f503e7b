"""End to end against one real `musicgen serve` (tiny model) shared by this module: the seed's
curl calls, Range, the event stream, path traversal, every kind of bad input, cancellation,
listing, deletion, /models, and /health latency while the model works."""

from __future__ import annotations

import http.client
import json
import subprocess
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from musicgen_server import __version__
from musicgen_server.generation import audio
from support import start_server, wait_for


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_folder):
    server = start_server(
        tmp_path_factory.mktemp("shared-server"),
        {"MUSICGEN_MAX_BATCH_SIZE": "2", "MUSICGEN_MAX_DURATION": "30"},
        tiny_folder=tiny_folder,
    )
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(server):
    with server.client() as client:
        yield client


def submit(client, **body) -> str:
    body.setdefault("prompt", "upbeat electronic music")
    response = client.post("/generate", json=body)
    assert response.status_code == 202, response.text
    return response.json()["job_id"]


def until_finished(client, job_id, timeout=90) -> dict:
    def check():
        job = client.get(f"/status/{job_id}").json()
        return job if job["status"] in ("completed", "failed", "cancelled") else None

    return wait_for(check, timeout, 0.1, f"job {job_id} to end")


def curl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "-sS", *args], capture_output=True, timeout=60, check=True)


def test_the_seed_api_with_curl(server, tmp_path):
    health = json.loads(curl(f"{server.url}/health").stdout)
    assert health == {"status": "healthy", "service": "musicgen-api", "version": __version__}

    created = curl(
        "-X",
        "POST",
        f"{server.url}/generate",
        "-H",
        "Content-Type: application/json",
        "-d",
        '{"prompt": "upbeat electronic music", "duration": 5}',
        "-w",
        "\n%{http_code}",
    ).stdout.decode()
    body, code = created.rsplit("\n", 1)
    assert code == "202"
    queued = json.loads(body)
    assert set(queued) == {"job_id", "status"} and queued["status"] == "queued"
    job_id = queued["job_id"]
    assert str(uuid.UUID(job_id)) == job_id

    def completed():
        status = json.loads(curl(f"{server.url}/status/{job_id}").stdout)
        assert status["status"] in ("queued", "running", "completed"), status
        return status if status["status"] == "completed" else None

    status = wait_for(completed, 60, 0.2, "the job to complete")
    assert status["audio_url"] == f"/audio/{job_id}.wav"
    assert status["progress"] == 1.0 and isinstance(status["seed"], int)
    assert status["timings"]["generation_seconds"] > 0 and status["timings"]["real_time_factor"] > 0
    assert status["created_at"] and status["started_at"] and status["finished_at"] and status["expires_at"]

    target = tmp_path / "out.wav"
    fetched = curl(
        "-o", str(target), "-w", "%{http_code} %{content_type}", f"{server.url}{status['audio_url']}"
    )
    assert fetched.stdout.decode() == "200 audio/wav"
    samples, rate = audio.read(target)
    assert rate == 32000 and samples.shape == (1, 160000)
    assert samples.shape[1] / rate == 5.0
    tags = audio.read_tags(target)
    assert tags["title"] == "upbeat electronic music" and f"seed: {status['seed']}" in tags["comment"]


def test_curl_without_a_content_type_is_still_json(server):
    created = curl("-X", "POST", f"{server.url}/generate", "-d", '{"prompt": "drums", "duration": 0.5}')
    assert json.loads(created.stdout)["status"] == "queued"


def test_range_requests_return_206_with_the_right_bytes(client):
    job = until_finished(client, submit(client, duration=1, format="flac"))
    url = job["audio_url"]
    assert url.endswith(".flac")
    whole = client.get(url)
    assert whole.status_code == 200 and whole.headers["content-type"] == "audio/flac"
    assert whole.headers["accept-ranges"] == "bytes"
    size = len(whole.content)

    part = client.get(url, headers={"Range": "bytes=100-199"})
    assert part.status_code == 206
    assert part.headers["content-range"] == f"bytes 100-199/{size}"
    assert part.content == whole.content[100:200]

    tail = client.get(url, headers={"Range": "bytes=-10"})
    assert tail.status_code == 206 and tail.content == whole.content[-10:]
    rest = client.get(url, headers={"Range": f"bytes={size - 5}-"})
    assert rest.status_code == 206 and rest.content == whole.content[-5:]
    assert client.get(url, headers={"Range": f"bytes={size + 10}-{size + 20}"}).status_code == 416

    head = client.head(url)
    assert head.status_code == 200 and int(head.headers["content-length"]) == size and head.content == b""
    download = client.get(url, params={"download": "true"})
    assert download.headers["content-disposition"].startswith("attachment")


@pytest.mark.parametrize(("fmt", "media_type"), [("mp3", "audio/mpeg"), ("ogg", "audio/ogg")])
def test_lossy_formats_are_exact_to_the_sample(client, fmt, media_type):
    job = until_finished(client, submit(client, duration=1.5, format=fmt, normalize="peak"))
    response = client.get(job["audio_url"])
    assert response.headers["content-type"] == media_type
    samples, rate = audio.read(response.content)
    assert samples.shape == (1, 48000) and rate == 32000
    assert np.abs(samples).max() < 1.0


def test_the_event_stream_sends_rising_progress_then_completed(client, server):
    job_id = submit(client, duration=12)
    events = []
    with httpx.stream("GET", f"{server.url}/jobs/{job_id}/events", timeout=60) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        name = None
        for line in response.iter_lines():
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                events.append((name, json.loads(line.removeprefix("data: "))))
    names = [name for name, _ in events]
    assert names[-1] == "completed" and set(names[:-1]) == {"progress"}
    final = events[-1][1]
    assert final["audio_url"] == f"/audio/{job_id}.wav" and final["progress"] == 1.0
    running = [data["progress"] for name, data in events if data["status"] == "running"]
    assert running == sorted(running)
    assert len({value for value in running if 0 < value < 1}) >= 3, running


def test_events_of_an_unknown_job_are_404(client):
    assert client.get(f"/jobs/{uuid.uuid4()}/events").status_code == 404
    assert client.get("/jobs/nope/events").status_code == 404


def raw_get(server, path: str) -> tuple[int, bytes]:
    """Sends the path exactly as written (no client-side normalisation of '..' or '%2F')."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        connection.putrequest("GET", path, skip_accept_encoding=True)
        connection.endheaders()
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def test_path_traversal_and_odd_names_on_audio_are_404(client, server):
    job = until_finished(client, submit(client, duration=0.5))
    job_id = job["job_id"]
    (server.data_dir / "audio" / f"{job_id}.txt").write_text("secret")
    attempts = [
        "/audio/..%2Fjobs.db",
        "/audio/..%2f..%2fjobs.db",
        "/audio/%2e%2e%2fjobs.db",
        "/audio/%2e%2e/jobs.db",
        "/audio/../jobs.db",
        "/audio/..",
        "/audio/%2Fetc%2Fpasswd",
        "/audio//etc/passwd",
        "/audio/%2F" + str(server.data_dir / "jobs.db").lstrip("/").replace("/", "%2F"),
        f"/audio/{job_id}.txt",
        f"/audio/{job_id}.db",
        f"/audio/{job_id}",
        f"/audio/{job_id}.mp3",
        f"/audio/{job_id}.wav%00.txt",
        f"/audio/{job_id}.wav/",
        f"/audio/{job_id.upper()}.wav",
        f"/audio/{job_id.replace('-', '')}.wav",
        f"/audio/{uuid.uuid4()}.wav",
        "/audio/not-a-uuid.wav",
        f"/audio/..%2F{job_id}.wav",
        f"/audio/.%2F{job_id}.wav",
    ]
    for path in attempts:
        status, body = raw_get(server, path)
        assert status == 404, (path, status, body[:200])
        assert b"SQLite" not in body and b"secret" not in body and b"root:" not in body
        assert "detail" in json.loads(body)
    assert raw_get(server, f"/audio/{job_id}.wav")[0] == 200


BAD_INPUTS = [
    ({"duration": 5}, 422, ["prompt", "required"]),
    ({"prompt": "", "duration": 5}, 422, ["prompt", "empty"]),
    ({"prompt": "   \n", "duration": 5}, 422, ["prompt", "empty"]),
    ({"prompt": "x" * 2001, "duration": 5}, 422, ["prompt", "limit is 2000"]),
    ({"prompt": 5, "duration": 5}, 422, ["prompt", "string"]),
    ({"prompt": "drums", "duration": 0}, 422, ["duration", "greater than 0"]),
    ({"prompt": "drums", "duration": -3}, 422, ["duration", "greater than 0"]),
    ({"prompt": "drums", "duration": 31}, 422, ["duration", "maximum of 30"]),
    ({"prompt": "drums", "duration": "long"}, 422, ["duration", "number"]),
    ({"prompt": "drums", "duration": True}, 422, ["duration", "not true or false"]),
    ({"prompt": "drums", "model": "huge"}, 422, ["model", "unknown model 'huge'"]),
    ({"prompt": "drums", "model": "/etc"}, 422, ["model"]),
    ({"prompt": "drums", "model": ""}, 422, ["model", "empty"]),
    ({"prompt": "drums", "temperature": 0}, 422, ["temperature", "greater than 0"]),
    ({"prompt": "drums", "temperature": 11}, 422, ["temperature", "less than or equal to 10"]),
    ({"prompt": "drums", "top_k": -1}, 422, ["top_k"]),
    ({"prompt": "drums", "top_k": 4096}, 422, ["top_k", "2048"]),
    ({"prompt": "drums", "top_k": 2.5}, 422, ["top_k", "integer"]),
    ({"prompt": "drums", "top_p": 1.5}, 422, ["top_p", "less than or equal to 1"]),
    ({"prompt": "drums", "guidance_scale": 0.5}, 422, ["guidance_scale", "greater than or equal to 1"]),
    ({"prompt": "drums", "guidance_scale": 31}, 422, ["guidance_scale"]),
    ({"prompt": "drums", "seed": -1}, 422, ["seed"]),
    ({"prompt": "drums", "seed": 2**64}, 422, ["seed"]),
    ({"prompt": "drums", "seed": "lucky"}, 422, ["seed", "integer"]),
    ({"prompt": "drums", "format": "aiff"}, 422, ["format", "not one of wav, flac, ogg, mp3"]),
    ({"prompt": "drums", "normalize": "max"}, 422, ["normalize", "not one of none, peak, loudness"]),
    ({"prompt": "drums", "tempo": 120}, 422, ["tempo", "not a field"]),
    ([{"prompt": "drums"}], 422, ["JSON object"]),
    ("just words", 422, ["JSON object"]),
]


@pytest.mark.parametrize(("body", "status", "words"), BAD_INPUTS, ids=[str(b)[:40] for b, _, _ in BAD_INPUTS])
def test_bad_input_is_a_4xx_that_says_what_to_change(client, body, status, words):
    before = client.get("/jobs", params={"limit": 1}).json()["total"]
    response = client.post("/generate", json=body)
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str) and detail
    for word in words:
        assert word in detail, (word, detail)
    assert client.get("/jobs", params={"limit": 1}).json()["total"] == before


@pytest.mark.parametrize(
    ("raw", "content_type", "status", "words"),
    [
        (b'{"prompt": "drums", "duration": 5', "application/json", 400, ["not valid JSON"]),
        (b"{bad}", "application/json", 400, ["not valid JSON"]),
        (b'{"prompt": "drums", "duration": NaN}', "application/json", 422, ["duration", "finite"]),
        (b'{"prompt": "drums", "duration": Infinity}', "application/json", 422, ["duration"]),
        (b"", "application/json", 422, ["body", "required"]),
        (b"prompt=drums&duration=5", "application/x-www-form-urlencoded", 422, ["JSON object"]),
        (b'{"prompt": "' + b"x" * 70_000 + b'"}', "application/json", 413, ["limit is 65536 bytes"]),
    ],
)
def test_malformed_bodies(client, raw, content_type, status, words):
    response = client.post("/generate", content=raw, headers={"Content-Type": content_type})
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    for word in words:
        assert word in detail, (word, detail)


def test_an_oversized_chunked_body_is_413(server):
    def chunks():
        for _ in range(20):
            yield b"x" * 8192

    response = httpx.post(
        f"{server.url}/generate", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 413 and "limit" in response.json()["detail"]


def test_bad_query_values_and_unknown_ids(client):
    assert client.get("/jobs", params={"status": "done"}).status_code == 422
    assert "not one of queued" in client.get("/jobs", params={"status": "done"}).json()["detail"]
    assert client.get("/jobs", params={"limit": 0}).status_code == 422
    assert client.get("/jobs", params={"limit": "many"}).status_code == 422
    for path in (f"/status/{uuid.uuid4()}", "/status/123", "/status/..%2Fjobs.db"):
        response = client.get(path)
        assert response.status_code == 404 and response.json()["detail"]
    assert client.delete(f"/jobs/{uuid.uuid4()}").status_code == 404
    assert client.get("/nowhere").status_code == 404
    assert client.put("/generate").status_code == 405


def test_cancel_a_queued_and_a_running_job(client):
    # The batch size is 2 here: two long jobs run, the third waits.
    running = [submit(client, duration=30, seed=index) for index in range(2)]
    queued = submit(client, duration=30)
    wait_for(lambda: client.get(f"/status/{running[0]}").json()["progress"] > 0.01, 30, 0.05, "generation")
    status = client.get(f"/status/{queued}").json()
    assert status["status"] == "queued" and status["queue_position"] == 1

    started = time.monotonic()
    response = client.delete(f"/jobs/{queued}")
    assert response.status_code == 200 and response.json() == {
        "job_id": queued,
        "status": "cancelled",
        "deleted": False,
    }
    assert time.monotonic() - started < 1.0

    for job_id in running:
        started = time.monotonic()
        response = client.delete(f"/jobs/{job_id}")
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "cancelled"
        assert time.monotonic() - started < 1.0
        after = client.get(f"/status/{job_id}").json()
        assert after["status"] == "cancelled" and after["audio_url"] is None
    # Deleting a cancelled job removes it.
    assert client.delete(f"/jobs/{queued}").json()["deleted"] is True
    assert client.get(f"/status/{queued}").status_code == 404


def test_list_filter_and_delete_with_audio(client, server):
    ids = [submit(client, prompt=f"list {index}", duration=0.5) for index in range(3)]
    for job_id in ids:
        until_finished(client, job_id)
    page = client.get("/jobs", params={"limit": 2}).json()
    assert [job["job_id"] for job in page["jobs"]] == ids[::-1][:2]
    assert page["next_offset"] == 2 and page["total"] >= 3
    second = client.get("/jobs", params={"limit": 2, "offset": 2}).json()
    assert second["jobs"][0]["job_id"] == ids[0]
    completed = client.get("/jobs", params={"status": "completed", "limit": 500}).json()
    assert {job["status"] for job in completed["jobs"]} == {"completed"}
    both = client.get("/jobs", params=[("status", "completed"), ("status", "cancelled")]).json()
    assert both["total"] == client.get("/jobs", params={"status": "completed,cancelled"}).json()["total"]

    target = ids[1]
    path = server.data_dir / "audio" / f"{target}.wav"
    assert path.is_file()
    response = client.delete(f"/jobs/{target}")
    assert response.json() == {"job_id": target, "status": "completed", "deleted": True}
    assert not path.exists()
    assert client.get(f"/status/{target}").status_code == 404
    assert client.get(f"/audio/{target}.wav").status_code == 404


def test_models_lists_aliases_loaded_models_and_limits(client):
    models = client.get("/models").json()
    assert models["default_model"] == "tiny"
    by_name = {model["name"]: model for model in models["models"]}
    assert by_name["tiny"]["trained"] is False and by_name["tiny"]["loaded"] is True
    assert by_name["tiny"]["downloaded"] is True and by_name["tiny"]["default"] is True
    assert by_name["small"]["license"] == "CC-BY-NC-4.0" and by_name["small"]["downloaded"] is False
    assert [model["name"] for model in models["loaded"]] == ["tiny"]
    assert models["limits"]["max_duration"] == 30 and models["limits"]["max_batch_size"] == 2
    assert models["limits"]["max_queue"] == 100
    assert [fmt["name"] for fmt in models["formats"]] == ["wav", "flac", "ogg", "mp3"]
    assert models["normalize"] == ["none", "peak", "loudness"]


def test_probes_and_docs(client):
    assert client.get("/live").json() == {"status": "alive"}
    ready = client.get("/ready")
    assert ready.status_code == 200 and ready.json()["status"] == "ready" and ready.json()["model"] == "tiny"
    assert client.get("/docs").status_code == 200
    schema = client.get("/openapi.json").json()
    for path in (
        "/generate",
        "/status/{job_id}",
        "/audio/{name}",
        "/jobs",
        "/jobs/{job_id}",
        "/jobs/{job_id}/events",
        "/models",
        "/health",
        "/ready",
        "/live",
        "/metrics",
    ):
        assert path in schema["paths"], path
    duration = schema["components"]["schemas"]["GenerateRequest"]["properties"]["duration"]
    assert "exclusiveMinimum" in json.dumps(duration)


def test_health_answers_in_under_100_ms_while_the_model_works(client, server):
    jobs = [submit(client, duration=30, seed=index) for index in range(2)]
    wait_for(lambda: client.get(f"/status/{jobs[0]}").json()["progress"] > 0.02, 30, 0.05, "generation")
    times = []
    with httpx.Client(base_url=server.url, timeout=5) as fresh:
        for _ in range(40):
            started = time.perf_counter()
            response = fresh.get("/health")
            times.append(time.perf_counter() - started)
            assert response.status_code == 200
            time.sleep(0.02)
    status = client.get(f"/status/{jobs[0]}").json()
    assert status["status"] == "running" and status["progress"] < 1, "the model must still be working"
    assert max(times) < 0.1, sorted(times)[-5:]
    for job_id in jobs:
        client.delete(f"/jobs/{job_id}")


def test_many_status_polls_at_once_are_fine(client):
    job_id = submit(client, duration=0.5)
    with ThreadPoolExecutor(16) as pool:
        codes = list(pool.map(lambda _: client.get(f"/status/{job_id}").status_code, range(64)))
    assert codes == [200] * 64
    until_finished(client, job_id)
