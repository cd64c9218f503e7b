"""Admission and access on real servers: 429 when the queue is full, API keys that isolate
owners and never reach the logs, and a server whose default model is missing."""

from __future__ import annotations

import json

import httpx

from support import wait_for


def test_a_full_queue_answers_429_with_retry_after(start_server):
    server = start_server(env={"MUSICGEN_MAX_QUEUE": "2", "MUSICGEN_MAX_BATCH_SIZE": "1"})
    accepted = []
    with server.client() as client:
        running = client.post("/generate", json={"prompt": "long", "duration": 30}).json()["job_id"]
        wait_for(
            lambda: client.get(f"/status/{running}").json()["status"] == "running", 30, 0.05, "a running job"
        )
        for _ in range(2):
            response = client.post("/generate", json={"prompt": "waits", "duration": 30})
            assert response.status_code == 202
            accepted.append(response.json()["job_id"])
        refused = client.post("/generate", json={"prompt": "one too many", "duration": 1})
        assert refused.status_code == 429
        assert int(refused.headers["retry-after"]) >= 1
        detail = refused.json()["detail"]
        assert "queue is full" in detail and "2 jobs waiting" in detail and "retry in" in detail
        assert client.get("/jobs", params={"status": "queued"}).json()["total"] == 2
        # A slot frees when a waiting job is cancelled.
        assert client.delete(f"/jobs/{accepted[0]}").json()["status"] == "cancelled"
        assert client.post("/generate", json={"prompt": "now fits", "duration": 1}).status_code == 202
        metrics = client.get("/metrics").text
        assert 'musicgen_jobs_rejected_total{reason="queue_full"} 1.0' in metrics
        for job in client.get("/jobs", params={"status": "queued,running"}).json()["jobs"]:
            client.delete(f"/jobs/{job['job_id']}")


ALPHA = "alpha-key-0123456789"
BETA = "beta-key-9876543210"


def test_api_keys_isolate_owners_and_stay_out_of_logs_and_the_database(start_server):
    server = start_server(env={"MUSICGEN_API_KEYS": f"{ALPHA}, {BETA}", "MUSICGEN_LOG_FORMAT": "json"})
    alpha = {"Authorization": f"Bearer {ALPHA}"}
    beta = {"X-API-Key": BETA}
    with server.client() as client:
        for path in ("/health", "/live", "/ready", "/metrics"):
            assert client.get(path).status_code == 200, path
        body = {"prompt": "private song", "duration": 0.5}
        missing = client.post("/generate", json=body)
        assert missing.status_code == 401 and "needs an API key" in missing.json()["detail"]
        assert missing.headers["www-authenticate"] == "Bearer"
        wrong = client.post("/generate", json=body, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and "not valid" in wrong.json()["detail"]
        assert client.get("/models").status_code == 401

        job_id = client.post("/generate", json=body, headers=alpha).json()["job_id"]
        job = wait_for(
            lambda: (
                (j := client.get(f"/status/{job_id}", headers=alpha).json())["status"] == "completed" and j
            ),
            30,
            0.1,
            "completion",
        )
        for path in (f"/status/{job_id}", job["audio_url"], "/jobs", f"/jobs/{job_id}/events", "/models"):
            assert client.get(path).status_code == 401, path
        for path in (f"/status/{job_id}", job["audio_url"], f"/jobs/{job_id}/events"):
            response = client.get(path, headers=beta)
            assert response.status_code == 404, path
        assert client.delete(f"/jobs/{job_id}", headers=beta).status_code == 404
        assert client.get("/jobs", headers=beta).json()["total"] == 0
        assert client.get(job["audio_url"], headers={"X-API-Key": ALPHA}).status_code == 200
        assert [j["job_id"] for j in client.get("/jobs", headers=alpha).json()["jobs"]] == [job_id]
        with client.stream("GET", f"/jobs/{job_id}/events", headers=alpha) as stream:
            assert stream.status_code == 200 and "event: completed" in stream.read().decode()
        assert client.delete(f"/jobs/{job_id}", headers=alpha).json()["deleted"] is True
    server.stop()
    logs = server.logs()
    assert ALPHA not in logs and BETA not in logs
    lines = [json.loads(line) for line in logs.splitlines() if line.startswith("{")]
    assert len(lines) > 10 and len(lines) == len([line for line in logs.splitlines() if line.strip()])
    job_lines = [line for line in lines if line.get("job_id") == job_id]
    assert {line["event"] for line in job_lines} >= {"queued", "running", "completed", "deleted"}
    requests = [line for line in lines if line["logger"] == "musicgen_server.api.requests"]
    assert any(line["path"] == "/generate" and line["status"] == 202 for line in requests)
    database = b"".join(path.read_bytes() for path in server.data_dir.glob("jobs.db*"))
    assert ALPHA.encode() not in database and BETA.encode() not in database


def test_a_missing_default_model_keeps_ready_503_with_the_reason_while_tiny_works(start_server):
    server = start_server(env={"MUSICGEN_MODEL": "small", "HF_HUB_OFFLINE": "1"}, ready=False)
    with server.client() as client:

        def reason():
            response = client.get("/ready")
            assert response.status_code == 503
            detail = response.json()["detail"]
            return detail if "not available" in detail else None

        detail = wait_for(reason, 30, 0.1, "/ready to give the reason")
        assert "small" in detail and "HF_HUB_OFFLINE" in detail
        assert client.get("/health").status_code == 200 and client.get("/live").status_code == 200

        default = client.post("/generate", json={"prompt": "needs small", "duration": 1})
        assert default.status_code == 202
        failed = wait_for(
            lambda: (
                (j := client.get(f"/status/{default.json()['job_id']}").json())["status"] == "failed" and j
            ),
            30,
            0.1,
            "the job to fail",
        )
        assert failed["model"] == "small" and "musicgen models pull small" in failed["error"]

        tiny = client.post("/generate", json={"prompt": "works", "duration": 1, "model": "tiny"}).json()[
            "job_id"
        ]
        done = wait_for(
            lambda: (j := client.get(f"/status/{tiny}").json())["status"] == "completed" and j,
            30,
            0.1,
            "tiny",
        )
        assert httpx.get(server.url + done["audio_url"]).status_code == 200
        models = {m["name"]: m for m in client.get("/models").json()["models"]}
        assert models["small"]["default"] is True and models["small"]["loaded"] is False
        assert client.get("/ready").status_code == 503
