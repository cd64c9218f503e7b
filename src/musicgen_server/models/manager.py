"""The models kept in memory: loaded on first use, least-recently-used evicted under a count or
memory limit, and loaded without holding anything that generation on another model needs (hot
swap: small -> medium -> large while serving).
"""

from __future__ import annotations

import gc
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future

import torch

from musicgen_server.config import Settings
from musicgen_server.models.loading import LoadedModel, load_model
from musicgen_server.models.registry import ModelSpec, resolve

log = logging.getLogger(__name__)

Loader = Callable[[ModelSpec, Settings], LoadedModel]
EvictionListener = Callable[[LoadedModel], None]


def model_key(spec: ModelSpec) -> str:
    """Two names for the same weights (`small`, `facebook/musicgen-small`) share one entry."""
    return f"{spec.kind}:{spec.source}"


class ModelManager:
    def __init__(self, settings: Settings, loader: Loader | None = None):
        self.settings = settings
        self._loader: Loader = loader or (lambda spec, s: load_model(spec, s))
        self._models: OrderedDict[str, LoadedModel] = OrderedDict()
        self._loading: dict[str, Future[LoadedModel]] = {}
        # Guards the two dicts only; it is never held while weights load, so a slow load of one
        # model never stalls a lookup of another.
        self._lock = threading.Lock()
        self._listeners: list[EvictionListener] = []

    # -- queries ----------------------------------------------------------------------------
    def loaded(self) -> list[LoadedModel]:
        with self._lock:
            return list(self._models.values())

    def is_loaded(self, name: str) -> bool:
        key = model_key(resolve(name))
        with self._lock:
            return key in self._models

    def peek(self, name: str) -> LoadedModel | None:
        """The model if it is in memory, without loading it or touching its LRU position."""
        key = model_key(resolve(name))
        with self._lock:
            return self._models.get(key)

    def is_loading(self, name: str) -> bool:
        key = model_key(resolve(name))
        with self._lock:
            return key in self._loading

    # -- loading ----------------------------------------------------------------------------
    def get(self, name: str | ModelSpec) -> LoadedModel:
        """The loaded model, loading it first if needed. Concurrent callers of the same model
        wait for one load; callers of other models are not held up by it."""
        spec = name if isinstance(name, ModelSpec) else resolve(name)
        key = model_key(spec)
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
            future = self._loading.get(key)
            owner = future is None
            if owner:
                future = Future()
                self._loading[key] = future
        if not owner:
            return future.result()
        try:
            self._make_room(exclude=key, incoming=1)
            loaded = self._loader(spec, self.settings)
        except BaseException as error:
            with self._lock:
                self._loading.pop(key, None)
            future.set_exception(error)
            raise
        with self._lock:
            self._models[key] = loaded
            self._loading.pop(key, None)
        future.set_result(loaded)
        self._make_room(exclude=key, incoming=0)
        return loaded

    # -- eviction ---------------------------------------------------------------------------
    def add_eviction_listener(self, listener: EvictionListener) -> None:
        """Called after a model leaves the manager (the generation layer stops its engine)."""
        self._listeners.append(listener)

    def evict(self, name: str) -> bool:
        key = model_key(resolve(name))
        with self._lock:
            loaded = self._models.pop(key, None)
        if loaded is None:
            return False
        self._release(loaded)
        return True

    def clear(self) -> None:
        with self._lock:
            models = list(self._models.values())
            self._models.clear()
        for loaded in models:
            self._release(loaded)

    def _over_limit(self, incoming: int) -> bool:
        if len(self._models) + incoming > self.settings.max_loaded_models:
            return True
        budget = self.settings.model_memory_gb
        if budget is None:
            return False
        used = sum(model.weights_bytes for model in self._models.values())
        return used > budget * (1 << 30)

    def _make_room(self, exclude: str, incoming: int) -> None:
        while True:
            with self._lock:
                if not self._over_limit(incoming):
                    return
                victims = [key for key in self._models if key != exclude]
                if not victims:
                    return  # the newcomer alone is over the memory budget: keep it anyway
                loaded = self._models.pop(victims[0])
            log.info("evicting model %s (least recently used)", loaded.name)
            self._release(loaded)

    def _release(self, loaded: LoadedModel) -> None:
        for listener in self._listeners:
            try:
                listener(loaded)
            except Exception:  # a listener's failure must not keep the model in memory
                log.exception("eviction listener failed for %s", loaded.name)
        del loaded
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
