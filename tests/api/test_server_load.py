"""30 jobs submitted at once to a fresh server: all complete with the right audio, they ran in
batches, and /metrics (parsed by prometheus-client) counts exactly what was run."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
from prometheus_client.parser import text_string_to_metric_families

from musicgen_server.generation import audio
from support import wait_for

JOBS = 30
DURATION = 2.0


def samples_of(text: str) -> dict[tuple[str, tuple], float]:
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


def test_thirty_concurrent_jobs_complete_in_batches_and_metrics_match(start_server):
    server = start_server()

    def post(index: int) -> str:
        response = httpx.post(
            f"{server.url}/generate",
            json={"prompt": f"concurrent take {index}", "duration": DURATION, "seed": index},
            timeout=30,
        )
        assert response.status_code == 202, response.text
        return response.json()["job_id"]

    with ThreadPoolExecutor(JOBS) as pool:
        ids = list(pool.map(post, range(JOBS)))
    assert len(set(ids)) == JOBS

    with server.client() as client:

        def all_done():
            page = client.get("/jobs", params={"limit": 100}).json()["jobs"]
            ended = [job for job in page if job["status"] != "queued" and job["status"] != "running"]
            return page if len(ended) == JOBS else None

        jobs = {job["job_id"]: job for job in wait_for(all_done, 180, 0.25, "all 30 jobs to end")}
        assert set(jobs) == set(ids)
        assert {job["status"] for job in jobs.values()} == {"completed"}
        for job_id, job in jobs.items():
            response = client.get(job["audio_url"])
            assert response.status_code == 200
            samples, rate = audio.read(response.content)
            assert samples.shape == (1, int(DURATION * 32000)) and rate == 32000
        batch_sizes = [job["timings"]["batch_size"] for job in jobs.values()]
        assert max(batch_sizes) > 1 and max(batch_sizes) <= 8, batch_sizes
        assert {job["seed"] for job in jobs.values()} == set(range(JOBS))

        metrics = client.get("/metrics")
        assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
        values = samples_of(metrics.text)

    def value(name, **labels):
        return values[(name, tuple(sorted(labels.items())))]

    assert value("musicgen_jobs_submitted_total") == JOBS
    assert value("musicgen_jobs_finished_total", status="completed") == JOBS
    assert value("musicgen_jobs", status="completed") == JOBS
    assert value("musicgen_jobs", status="queued") == 0 and value("musicgen_jobs", status="failed") == 0
    assert value("musicgen_queue_depth") == 0
    assert value("musicgen_generation_seconds_count") == JOBS
    assert value("musicgen_queue_wait_seconds_count") == JOBS
    assert value("musicgen_real_time_factor_ratio_count") == JOBS
    assert abs(value("musicgen_audio_generated_seconds_total") - JOBS * DURATION) < 1e-6
    assert value("musicgen_batch_size_count") == JOBS
    assert value("musicgen_batch_size_sum") == sum(batch_sizes) > JOBS  # some ran in batches
    assert value("musicgen_batch_size_bucket", le="1.0") < JOBS
    assert value("musicgen_http_requests_total", method="POST", route="/generate", status="202") == JOBS
    assert value("musicgen_models_loaded") == 1
    assert value("musicgen_model_load_seconds", model="tiny") > 0
    assert value("musicgen_model_loaded", model="tiny", device="cpu", dtype="float32") == 1
    assert value("musicgen_ready") == 1
    for name, _ in values:
        assert name.startswith("musicgen_") or name.startswith(("python_", "process_")), name
