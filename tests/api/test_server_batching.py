"""The job service on the continuous-batching engine: a job claimed while others run joins the
running batch at once instead of waiting for it to finish."""

from __future__ import annotations

from support import wait_for


def test_a_short_job_joins_and_leaves_while_a_long_one_runs(start_server):
    server = start_server(env={"MUSICGEN_MAX_BATCH_SIZE": "4"})
    with server.client() as client:
        long_id = client.post("/generate", json={"prompt": "long drone", "duration": 30}).json()["job_id"]
        wait_for(lambda: client.get(f"/status/{long_id}").json()["progress"] > 0.05, timeout=30)
        short_id = client.post("/generate", json={"prompt": "short hit", "duration": 1}).json()["job_id"]
        short = wait_for(
            lambda: (job := client.get(f"/status/{short_id}").json())["status"] == "completed" and job,
            timeout=30,
        )
        long_now = client.get(f"/status/{long_id}").json()
        assert long_now["status"] == "running" and long_now["progress"] < 1
        assert short["timings"]["batch_size"] >= 2  # it ran beside the long job
        assert short["timings"]["queue_seconds"] < 2  # and did not wait for it
        long_done = wait_for(
            lambda: (job := client.get(f"/status/{long_id}").json())["status"] == "completed" and job,
            timeout=60,
        )
    assert long_done["finished_at"] > short["finished_at"]
