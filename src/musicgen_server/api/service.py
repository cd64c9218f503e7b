"""Everything one server process holds: the store, the audio folder, the models and engines,
the worker, the metrics, and whether it is ready or draining. Built when the app starts (its
lifespan), closed when it stops."""

from __future__ import annotations

import hashlib
import hmac
import logging
import threading
import time

from musicgen_server.config import Settings
from musicgen_server.errors import MusicgenError
from musicgen_server.generation.generator import MusicGenerator
from musicgen_server.generation.params import GenerationParams, GenerationRequest
from musicgen_server.jobs.artifacts import ArtifactStore
from musicgen_server.jobs.store import JobStore
from musicgen_server.jobs.worker import Worker

log = logging.getLogger(__name__)

WARMUP_SECONDS_OF_AUDIO = 0.5
# A default model that could not be loaded is tried again this often (it may be pulled later).
WARMUP_RETRY_SECONDS = 30.0
WARMUP_JOIN_SECONDS = 10.0


def hash_key(key: str) -> str:
    """What the store keeps of an API key: its SHA-256, never the key."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


class Service:
    def __init__(self, settings: Settings):
        from musicgen_server.api.metrics import Metrics

        self.settings = settings
        self.store = JobStore.from_settings(settings)
        self.artifacts = ArtifactStore(settings.audio_dir)
        self.generator = MusicGenerator(settings)
        self.worker = Worker(settings, self.store, self.artifacts, self.generator)
        self.metrics = Metrics(self)
        self.worker.add_listener(self.metrics.observe)
        self._key_hashes = frozenset(hash_key(key) for key in settings.api_keys)
        self.ready = False
        self.not_ready_reason: str | None = f"loading the default model '{settings.model}'"
        self.warmup_seconds: float | None = None
        self.draining = False
        self.stopping = False
        self._closed = threading.Event()
        self._warmup = threading.Thread(target=self._warm_up, name="warm-up", daemon=True)

    # -- keys -------------------------------------------------------------------------------
    @property
    def keys_required(self) -> bool:
        return bool(self._key_hashes)

    def owner_of(self, key: str) -> str | None:
        """The owner (key hash) for a valid key, or None."""
        digest = hash_key(key)
        valid = False
        for known in self._key_hashes:
            valid |= hmac.compare_digest(digest, known)
        return digest if valid else None

    # -- life -------------------------------------------------------------------------------
    def start(self) -> None:
        self.worker.start()
        self._warmup.start()

    def _warm_up(self) -> None:
        """Load the default model and run one short generation through it, so the first user
        does not pay for either; /ready says ready only after this."""
        name = self.settings.model
        first_failure = True
        while not self._closed.is_set():
            started = time.perf_counter()
            try:
                self.not_ready_reason = f"loading the default model '{name}'"
                engine = self.generator.engine(name)
                self.not_ready_reason = f"warming up the default model '{name}'"
                duration = min(WARMUP_SECONDS_OF_AUDIO, engine.max_duration)
                handle = engine.submit(
                    GenerationRequest("warm-up", GenerationParams(duration=duration, seed=0))
                )
                handle.result(timeout=600)
            except MusicgenError as error:
                self.not_ready_reason = f"the default model '{name}' is not available: {error.message}"
            except Exception as error:  # noqa: BLE001 - any failure is reported by /ready
                self.not_ready_reason = (
                    f"the default model '{name}' failed to load ({type(error).__name__}: {error})"
                )
            else:
                self.warmup_seconds = time.perf_counter() - started
                self.not_ready_reason = None
                self.ready = True
                log.info("ready: default model %s loaded and warmed up in %.2fs", name, self.warmup_seconds)
                return
            if self._closed.is_set():
                return
            (log.warning if first_failure else log.debug)("not ready: %s", self.not_ready_reason)
            first_failure = False
            self._closed.wait(WARMUP_RETRY_SECONDS)

    def readiness(self) -> tuple[bool, str | None]:
        if self.draining:
            return False, "shutting down: not taking new jobs"
        if not self.worker.alive:
            return False, "the job worker is not running"
        return self.ready, self.not_ready_reason

    def drain(self) -> None:
        """Stop taking jobs, give running ones the grace period, leave the rest queued."""
        self.draining = True
        self.worker.drain(self.settings.shutdown_grace)

    def close(self) -> None:
        self.stopping = True
        self._closed.set()
        if not self.draining:
            self.drain()
        self.worker.stop()
        if self._warmup.is_alive():
            self._warmup.join(timeout=WARMUP_JOIN_SECONDS)  # a load cannot be interrupted
        self.generator.close()
        self.store.close()
        log.info("stopped")
