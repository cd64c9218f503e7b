"""Several models in memory: loaded on first use, evicted least-recently-used, and a slow load
of one never holding up generation on another."""

from __future__ import annotations

import shutil
import threading
import time

import pytest

from musicgen_server.config import Settings
from musicgen_server.generation import GenerationParams, MusicGenerator
from musicgen_server.models import ModelManager, load_model


@pytest.fixture()
def three_models(tmp_path, tiny_folder, tiny_stereo_folder):
    third = tmp_path / "third"
    shutil.copytree(tiny_folder, third)
    return ["tiny", "tiny-stereo", str(third)]


def counting_loader(calls: list[str]):
    def load(spec, settings):
        calls.append(spec.name)
        return load_model(spec, settings)

    return load


def test_models_load_on_first_use_once(settings):
    calls: list[str] = []
    manager = ModelManager(settings, loader=counting_loader(calls))
    assert manager.loaded() == []
    first = manager.get("tiny")
    assert manager.get("tiny") is first
    assert calls == ["tiny"]


def test_concurrent_first_use_loads_once(settings):
    calls: list[str] = []
    manager = ModelManager(settings, loader=counting_loader(calls))
    results = []
    threads = [threading.Thread(target=lambda: results.append(manager.get("tiny"))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert calls == ["tiny"] and len({id(model) for model in results}) == 1


def test_least_recently_used_model_is_evicted_by_count(settings, three_models):
    manager = ModelManager(settings.model_copy(update={"max_loaded_models": 2}))
    evicted: list[str] = []
    manager.add_eviction_listener(lambda loaded: evicted.append(loaded.name))
    tiny, stereo, third = three_models
    manager.get(tiny)
    manager.get(stereo)
    manager.get(tiny)  # tiny is now the most recent
    manager.get(third)
    assert evicted == ["tiny-stereo"]
    assert {m.name for m in manager.loaded()} == {"tiny", third}


def test_memory_budget_evicts_down_to_the_limit(settings, three_models):
    one_model = load_model("tiny", settings).weights_bytes
    budget_gb = 1.5 * one_model / 2**30  # room for one model, not two
    manager = ModelManager(settings.model_copy(update={"max_loaded_models": 5, "model_memory_gb": budget_gb}))
    tiny, _, third = three_models
    manager.get(tiny)
    manager.get(third)
    assert [m.name for m in manager.loaded()] == [third]


def test_a_failed_load_is_retried_next_time(settings):
    attempts: list[int] = []

    def flaky(spec, s):
        attempts.append(1)
        if len(attempts) == 1:
            raise RuntimeError("disk hiccup")
        return load_model(spec, s)

    manager = ModelManager(settings, loader=flaky)
    with pytest.raises(RuntimeError):
        manager.get("tiny")
    assert manager.get("tiny").name == "tiny" and len(attempts) == 2


def test_loading_one_model_never_blocks_generation_on_another(settings: Settings, tiny_stereo_folder):
    """Hot swap: while 'tiny-stereo' is still loading (held at a gate), 'tiny' keeps generating."""
    gate = threading.Event()
    loading_started = threading.Event()

    def slow_for_stereo(spec, s):
        if spec.name == "tiny-stereo":
            loading_started.set()
            gate.wait(30)
        return load_model(spec, s)

    generator = MusicGenerator(settings, ModelManager(settings, loader=slow_for_stereo))
    try:
        generator.engine("tiny")
        loader = threading.Thread(target=lambda: generator.engine("tiny-stereo"))
        loader.start()
        assert loading_started.wait(10)
        started = time.monotonic()
        clip = generator.generate("tiny", "calm piano", GenerationParams(duration=0.5, seed=1))
        assert clip.samples.shape == (1, 16000)
        assert generator.manager.is_loading("tiny-stereo")  # still held at the gate
        assert time.monotonic() - started < 10
        gate.set()
        loader.join(30)
        assert generator.manager.is_loaded("tiny-stereo")
    finally:
        gate.set()
        generator.close()


def test_evicting_a_model_closes_its_engine(settings, three_models):
    generator = MusicGenerator(settings.model_copy(update={"max_loaded_models": 1}))
    try:
        first = generator.engine("tiny")
        generator.engine("tiny-stereo")
        with pytest.raises(RuntimeError, match="closed"):
            from musicgen_server.generation import GenerationRequest

            first.submit(GenerationRequest("late"))
        assert [engine.model.name for engine in generator.engines()] == ["tiny-stereo"]
    finally:
        generator.close()
