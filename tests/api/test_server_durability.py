"""A real server killed with SIGKILL loses no job; SIGTERM drains; audio expires after the TTL."""

from __future__ import annotations

import time

import httpx

from musicgen_server.generation import audio
from musicgen_server.jobs.store import JobStore
from support import wait_for


def statuses(client, ids):
    return {job_id: client.get(f"/status/{job_id}").json() for job_id in ids}


def submit(client, **body):
    body.setdefault("prompt", "durable drums")
    response = client.post("/generate", json=body)
    assert response.status_code == 202, response.text
    return response.json()["job_id"]


def test_sigkill_mid_run_then_restart_loses_nothing(start_server):
    # The default lease (10 s) is what a restarted server waits out for jobs of a dead worker.
    server = start_server(env={"MUSICGEN_MAX_BATCH_SIZE": "2"})
    with server.client() as client:
        ids = [submit(client, duration=8, seed=index) for index in range(6)]
        wait_for(
            lambda: any(0.05 < job["progress"] < 1 for job in statuses(client, ids).values()),
            30,
            0.05,
            "generation to be under way",
        )
        before = statuses(client, ids)
    server.kill()
    unfinished = {job_id for job_id, job in before.items() if job["status"] in ("queued", "running")}
    running = {job_id for job_id, job in before.items() if job["status"] == "running"}
    assert running and unfinished - running, before  # some were running, some still waiting

    restarted_at = time.monotonic()
    server.restart()
    with server.client() as client:

        def all_completed():
            now = statuses(client, ids)
            return now if all(job["status"] == "completed" for job in now.values()) else None

        after = wait_for(all_completed, 90, 0.2, "every job to complete after the restart")
        recovered = time.monotonic() - restarted_at
        for job_id in ids:
            job = after[job_id]
            samples, rate = audio.read(client.get(job["audio_url"]).content)
            assert samples.shape == (1, 8 * 32000) and rate == 32000
        for job_id in running:
            assert after[job_id]["attempts"] == 2  # run again after its lease ran out
        for job_id in unfinished - running:
            assert after[job_id]["attempts"] == 1
        # The seed fixed at submission is the one used on the second run too.
        assert {after[job_id]["seed"] for job_id in ids} == set(range(6))
    assert recovered < 60


def test_sigterm_lets_the_running_job_finish_refuses_new_ones_and_keeps_the_queue(start_server):
    server = start_server(env={"MUSICGEN_MAX_BATCH_SIZE": "1", "MUSICGEN_SHUTDOWN_GRACE": "60"})
    with server.client() as client:
        running = submit(client, duration=15)
        waiting = [submit(client, duration=15) for _ in range(2)]
        wait_for(lambda: client.get(f"/status/{running}").json()["progress"] > 0.05, 30, 0.05, "generation")
        server.terminate()
        refused = wait_for(
            lambda: (
                (r := client.post("/generate", json={"prompt": "late", "duration": 1})).status_code == 503
                and r
            ),
            5,
            0.02,
            "POST /generate to answer 503",
        )
        assert "shutting down" in refused.json()["detail"] and refused.headers["retry-after"]
        assert client.get("/health").status_code == 200
        assert client.get(f"/status/{running}").json()["status"] == "running"
        ready = client.get("/ready")
        assert ready.status_code == 503 and "shutting down" in ready.json()["detail"]
    assert server.wait_exit(60) == 0
    assert "Traceback" not in server.logs()
    store = JobStore(f"sqlite:///{server.data_dir / 'jobs.db'}")
    try:
        assert store.get(running).status == "completed"
        for job_id in waiting:
            job = store.get(job_id)
            assert job.status == "queued" and job.attempts == 0
        assert store.counts()["queued"] == 2  # the refused one was never stored
    finally:
        store.close()
    server.restart()
    with server.client() as client:
        for job_id in waiting:
            wait_for(
                lambda: client.get(f"/status/{job_id}").json()["status"] == "completed", 60, 0.2, "rerun"
            )


def test_sigterm_gives_running_jobs_back_when_the_grace_period_ends(start_server):
    server = start_server(env={"MUSICGEN_SHUTDOWN_GRACE": "1"})
    with server.client() as client:
        job_id = submit(client, duration=30)
        wait_for(lambda: client.get(f"/status/{job_id}").json()["progress"] > 0.02, 30, 0.05, "generation")
    asked = time.monotonic()
    server.terminate()
    assert server.wait_exit(30) == 0
    assert time.monotonic() - asked < 10
    store = JobStore(f"sqlite:///{server.data_dir / 'jobs.db'}")
    try:
        job = store.get(job_id)
        assert job.status == "queued" and job.progress == 0
    finally:
        store.close()


def test_audio_expires_after_the_ttl(start_server):
    server = start_server(env={"MUSICGEN_RESULT_TTL": "2", "MUSICGEN_SWEEP_INTERVAL": "0.5"})
    with server.client() as client:
        job_id = submit(client, duration=0.5)
        job = wait_for(
            lambda: (j := client.get(f"/status/{job_id}").json())["status"] == "completed" and j,
            30,
            0.05,
            "done",
        )
        assert job["expired"] is False and job["expires_at"]
        assert client.get(job["audio_url"]).status_code == 200
        path = server.data_dir / "audio" / f"{job_id}.wav"
        assert path.is_file()
        expired = wait_for(
            lambda: (j := client.get(f"/status/{job_id}").json())["expired"] and j, 10, 0.1, "expiry"
        )
        assert expired["status"] == "completed" and expired["audio_url"] is None
        gone = client.get(job["audio_url"])
        assert gone.status_code == 410 and "expired" in gone.json()["detail"]
        wait_for(lambda: not path.exists(), 5, 0.1, "the file to be deleted")
        listed = client.get("/jobs").json()["jobs"][0]
        assert listed["job_id"] == job_id and listed["expired"] is True
    assert httpx.get(f"{server.url}/health").status_code == 200
