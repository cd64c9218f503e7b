"""The app in-process (FastAPI's TestClient, real worker and tiny model): apps that share a
process keep their own metrics, constraints come from GenerationParams, draining refuses new
jobs, and the pieces /status shows."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from musicgen_server.api import create_app
from musicgen_server.api.schemas import GenerateRequest
from musicgen_server.config import Settings
from musicgen_server.generation.params import GenerationParams
from support import prepare_data_dir, wait_for


@pytest.fixture
def make_client(tmp_path, tiny_folder):
    opened = []

    def make(name="app", **overrides):
        data = prepare_data_dir(tmp_path / name, tiny_folder)
        settings = Settings(data_dir=data, model="tiny", shutdown_grace=1, poll_interval=0.1, **overrides)
        client = TestClient(create_app(settings))
        client.__enter__()
        opened.append(client)
        return client

    yield make
    for client in opened:
        client.__exit__(None, None, None)


def metric(client, name, **labels):
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return None


def completed(client, job_id):
    return wait_for(
        lambda: (job := client.get(f"/status/{job_id}").json())["status"] == "completed" and job,
        30,
        0.05,
        "done",
    )


def test_two_apps_in_one_process_keep_their_own_metrics_and_jobs(make_client):
    first, second = make_client("first"), make_client("second")
    job_id = first.post("/generate", json={"prompt": "drums", "duration": 0.5, "seed": 3}).json()["job_id"]
    job = completed(first, job_id)
    assert job["seed"] == 3 and job["audio_url"] == f"/audio/{job_id}.wav"
    assert first.get(job["audio_url"]).status_code == 200
    assert metric(first, "musicgen_jobs_submitted_total") == 1
    assert metric(second, "musicgen_jobs_submitted_total") == 0
    assert metric(first, "musicgen_jobs", status="completed") == 1
    assert metric(second, "musicgen_jobs", status="completed") == 0
    assert second.get(f"/status/{job_id}").status_code == 404


def test_the_seed_is_fixed_at_submission_and_reported_while_queued(make_client):
    client = make_client(max_batch_size=1)
    first = client.post("/generate", json={"prompt": "long", "duration": 30}).json()["job_id"]
    wait_for(lambda: client.get(f"/status/{first}").json()["status"] == "running", 30, 0.05, "running")
    second = client.post("/generate", json={"prompt": "next", "duration": 1}).json()["job_id"]
    queued = client.get(f"/status/{second}").json()
    assert queued["status"] == "queued" and queued["queue_position"] == 1
    assert isinstance(queued["seed"], int) and queued["audio_url"] is None and queued["started_at"] is None
    running = client.get(f"/status/{first}").json()
    assert running["queue_position"] is None
    assert running["eta_seconds"] is None or running["eta_seconds"] >= 0
    assert client.delete(f"/jobs/{first}").json()["status"] == "cancelled"
    done = completed(client, second)
    assert done["seed"] == queued["seed"] and done["timings"]["queue_seconds"] > 0


def test_a_draining_server_refuses_new_jobs_but_answers_the_rest(make_client):
    client = make_client()
    job_id = client.post("/generate", json={"prompt": "before", "duration": 0.5}).json()["job_id"]
    completed(client, job_id)
    client.app.state.service.draining = True
    refused = client.post("/generate", json={"prompt": "after", "duration": 0.5})
    assert refused.status_code == 503 and refused.headers["retry-after"] == "5"
    assert client.get(f"/status/{job_id}").status_code == 200
    assert client.get("/ready").status_code == 503
    assert client.get("/health").status_code == 200
    assert metric(client, "musicgen_jobs_submitted_total") == 1


def test_request_constraints_are_generation_params_constraints():
    request = GenerateRequest.model_json_schema()["properties"]
    params = GenerationParams.model_json_schema()["properties"]
    for name in ("duration", "temperature", "top_k", "top_p", "guidance_scale"):
        for bound in ("exclusiveMinimum", "minimum", "maximum"):
            expected = params[name].get(bound)
            got = next(
                (
                    option.get(bound)
                    for option in request[name].get("anyOf", [request[name]])
                    if bound in option
                ),
                None,
            )
            assert got == expected, (name, bound)


def test_validation_errors_name_each_field(make_client):
    client = make_client()
    response = client.post("/generate", json={"prompt": "", "duration": -1, "top_p": 2, "format": "wma"})
    assert response.status_code == 422
    fields = {error["field"] for error in response.json()["errors"]}
    assert fields == {"duration", "top_p", "format"}  # the empty prompt is checked after the types
    assert response.json()["detail"].count(";") == 2


def test_the_default_model_is_tried_again_until_it_appears(tmp_path, tiny_folder, monkeypatch):
    import shutil

    from musicgen_server.api import service as service_module

    monkeypatch.setattr(service_module, "WARMUP_RETRY_SECONDS", 0.2)
    later = tmp_path / "model-arrives-later"
    settings = Settings(data_dir=prepare_data_dir(tmp_path / "data", tiny_folder), model=str(later))
    with TestClient(create_app(settings)) as client:
        not_yet = wait_for(
            lambda: (r := client.get("/ready")).json()["detail"] and "not available" in r.text and r
        )
        assert not_yet.status_code == 503 and str(later) in not_yet.json()["detail"]
        shutil.copytree(tiny_folder, later)
        wait_for(lambda: client.get("/ready").status_code == 200, 30, 0.1, "ready once the model is there")
        assert client.get("/models").json()["default_model"] == str(later)
