"""Model names to running engines: the one object the CLI and the job worker talk to.

Each loaded model gets one engine (one thread that owns the device for that model). When the
model manager evicts a model, its engine is closed with it.
"""

from __future__ import annotations

import threading

from musicgen_server.config import Settings
from musicgen_server.generation.engines import Engine, create_engine
from musicgen_server.generation.handle import GeneratedAudio, GenerationHandle
from musicgen_server.generation.params import GenerationParams, GenerationRequest
from musicgen_server.models.loading import LoadedModel
from musicgen_server.models.manager import ModelManager, model_key
from musicgen_server.models.registry import resolve


class MusicGenerator:
    def __init__(self, settings: Settings, manager: ModelManager | None = None):
        self.settings = settings
        self.manager = manager or ModelManager(settings)
        self.manager.add_eviction_listener(self._on_evict)
        self._engines: dict[str, Engine] = {}
        self._lock = threading.Lock()

    def engine(self, model: str) -> Engine:
        """The engine of a model, loading the model first if needed (in the caller's thread,
        so a slow load never stalls engines of other models)."""
        loaded = self.manager.get(model)
        key = model_key(loaded.spec)
        with self._lock:
            engine = self._engines.get(key)
            if engine is None or engine.model is not loaded:
                engine = create_engine(loaded, self.settings)
                self._engines[key] = engine
            return engine

    def running_engine(self, model: str) -> Engine | None:
        """The engine if its model is loaded already; never loads."""
        with self._lock:
            return self._engines.get(model_key(resolve(model)))

    def engines(self) -> list[Engine]:
        with self._lock:
            return list(self._engines.values())

    def submit(self, model: str, request: GenerationRequest) -> GenerationHandle:
        return self.engine(model).submit(request)

    def generate(self, model: str, prompt: str, params: GenerationParams | None = None) -> GeneratedAudio:
        """Blocking convenience for scripts: one prompt in, one clip out."""
        handle = self.submit(model, GenerationRequest(prompt=prompt, params=params or GenerationParams()))
        return handle.result()

    def max_duration(self, model: str) -> float:
        return self.engine(model).max_duration

    def close(self) -> None:
        with self._lock:
            engines = list(self._engines.values())
            self._engines.clear()
        for engine in engines:
            engine.close()

    def _on_evict(self, loaded: LoadedModel) -> None:
        with self._lock:
            engine = self._engines.pop(model_key(loaded.spec), None)
        if engine is not None:
            engine.close()
