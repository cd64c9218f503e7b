"""Prometheus metrics, in a registry of each app's own (so several apps can live in one process,
as they do in tests).

Counters and histograms count what this process did since it started; the gauges for jobs by
status and queue depth are read from the store at scrape time, so they agree across processes
and restarts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from musicgen_server.jobs.store import COMPLETED, STATUSES
from musicgen_server.jobs.worker import JobOutcome

if TYPE_CHECKING:
    from musicgen_server.api.service import Service

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_SECONDS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
_RATIO = (0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128)
_BATCH = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)


class Metrics:
    def __init__(self, service: Service):
        self.registry = CollectorRegistry()
        r = self.registry
        self.submitted = Counter("musicgen_jobs_submitted", "Jobs accepted by POST /generate.", registry=r)
        self.rejected = Counter(
            "musicgen_jobs_rejected", "Jobs refused at admission, by reason.", ["reason"], registry=r
        )
        self.finished = Counter(
            "musicgen_jobs_finished",
            "Jobs this process ended, by outcome (released: given back to the queue).",
            ["status"],
            registry=r,
        )
        self.queue_wait = Histogram(
            "musicgen_queue_wait_seconds",
            "Time from submission to the start of generation.",
            buckets=_SECONDS,
            registry=r,
        )
        self.generation = Histogram(
            "musicgen_generation_seconds", "Wall time of a job's generation.", buckets=_SECONDS, registry=r
        )
        self.audio = Counter("musicgen_audio_generated_seconds", "Seconds of audio generated.", registry=r)
        self.real_time = Histogram(
            "musicgen_real_time_factor_ratio",
            "Seconds of audio per second of generation, per job.",
            buckets=_RATIO,
            registry=r,
        )
        self.batch = Histogram(
            "musicgen_batch_size", "Jobs generated together, as each job saw it.", buckets=_BATCH, registry=r
        )
        self.requests = Counter(
            "musicgen_http_requests",
            "HTTP requests, by route and status.",
            ["method", "route", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "musicgen_http_request_duration_seconds",
            "HTTP request time (for streams: until the stream ended).",
            ["method", "route"],
            registry=r,
        )
        r.register(_StateCollector(service))

    def observe(self, outcome: JobOutcome) -> None:
        self.finished.labels(outcome.status).inc()
        job = outcome.job
        if outcome.status != COMPLETED:
            return
        if job.queue_seconds is not None:
            self.queue_wait.observe(job.queue_seconds)
        if job.generation_seconds is not None:
            self.generation.observe(job.generation_seconds)
        if job.audio_seconds is not None:
            self.audio.inc(job.audio_seconds)
        if job.real_time_factor is not None:
            self.real_time.observe(job.real_time_factor)
        if job.batch_size is not None:
            self.batch.observe(job.batch_size)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _StateCollector(Collector):
    """Gauges read at scrape time from the store, the model manager and the worker."""

    def __init__(self, service: Service):
        self.service = service

    def describe(self):
        return self._families(with_values=False)

    def collect(self):
        return self._families(with_values=True)

    def _families(self, *, with_values: bool):
        service = self.service
        jobs = GaugeMetricFamily("musicgen_jobs", "Jobs in the store, by status.", labels=["status"])
        depth = GaugeMetricFamily("musicgen_queue_depth", "Jobs waiting to run.")
        in_flight = GaugeMetricFamily(
            "musicgen_worker_jobs_in_flight", "Jobs this process's worker holds, by model.", labels=["model"]
        )
        loaded = GaugeMetricFamily("musicgen_models_loaded", "Models in memory.")
        model_info = GaugeMetricFamily(
            "musicgen_model_loaded", "1 for each model in memory.", labels=["model", "device", "dtype"]
        )
        load_time = GaugeMetricFamily(
            "musicgen_model_load_seconds", "Time the model in memory took to load.", labels=["model"]
        )
        ready = GaugeMetricFamily("musicgen_ready", "1 when the default model is loaded and warmed up.")
        engine_active = GaugeMetricFamily(
            "musicgen_engine_active_requests", "Requests decoding in an engine (jobs and streams).", labels=["model"]
        )
        engine_pending = GaugeMetricFamily(
            "musicgen_engine_pending_requests", "Requests waiting for an engine slot.", labels=["model"]
        )
        if with_values:
            counts = service.store.counts()
            for status in STATUSES:
                jobs.add_metric([status], counts.get(status, 0))
            depth.add_metric([], counts.get("queued", 0))
            for model, count in service.worker.in_flight().items():
                in_flight.add_metric([model], count)
            models = service.generator.manager.loaded()
            loaded.add_metric([], len(models))
            for model in models:
                info = model.describe()
                model_info.add_metric([model.name, info["device"], info["dtype"]], 1)
                load_time.add_metric([model.name], model.load_seconds)
            ready.add_metric([], 1 if service.readiness()[0] else 0)
            for engine in service.generator.engines():
                engine_active.add_metric([engine.model.name], engine.active)
                engine_pending.add_metric([engine.model.name], engine.pending)
        return [jobs, depth, in_flight, loaded, model_info, load_time, ready, engine_active, engine_pending]
