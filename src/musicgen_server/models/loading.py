"""From a model name to weights in memory: find the files (built-in, folder, HF cache or a
download), load them with transformers' own `from_pretrained`, and describe what was loaded
(sample rate, frame rate, codebooks, channels, limits) so no other layer reads configs.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from musicgen_server.config import Settings
from musicgen_server.errors import ModelLoadError, ModelNotAvailableError
from musicgen_server.models import hub, tiny
from musicgen_server.models.device import resolve_device, resolve_dtype
from musicgen_server.models.hf_logging import quiet_transformers
from musicgen_server.models.registry import ModelSpec, resolve

log = logging.getLogger(__name__)

ARCHITECTURES = ("musicgen", "musicgen_melody")

# transformers' from_pretrained is not thread-safe: it builds models under process-wide contexts
# (meta-device initialisation, lazy module imports), so two loads at once in one process fail
# with "Cannot copy out of meta tensor". Loads are serialised; generation never takes this lock.
_LOAD_LOCK = threading.Lock()


@dataclass
class LoadedModel:
    """A model ready to generate, with the facts about it that generation needs."""

    name: str
    spec: ModelSpec
    folder: Path
    model: Any
    processor: Any
    device: torch.device
    dtype: torch.dtype
    architecture: str
    sample_rate: int
    frame_rate: int
    num_codebooks: int
    channels: int
    max_positions: int
    trained: bool
    weights_bytes: int
    load_seconds: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def hop_length(self) -> int:
        """Audio samples per codec frame (640 for MusicGen's 32 kHz EnCodec)."""
        return self.sample_rate // self.frame_rate

    @property
    def codebooks_per_channel(self) -> int:
        return self.num_codebooks // self.channels

    @property
    def max_duration(self) -> float:
        """Longest clip the decoder's position table allows, delay pattern included."""
        return (self.max_positions - self.codebooks_per_channel) / self.frame_rate

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "source": self.spec.source,
            "architecture": self.architecture,
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
            "sample_rate": self.sample_rate,
            "frame_rate": self.frame_rate,
            "channels": self.channels,
            "num_codebooks": self.num_codebooks,
            "max_duration": round(self.max_duration, 2),
            "trained": self.trained,
            "weights_bytes": self.weights_bytes,
            "load_seconds": round(self.load_seconds, 3),
        }


def locate(spec: ModelSpec, settings: Settings) -> Path:
    """The folder holding the model's files, fetching or building them when allowed."""
    if spec.kind == "tiny":
        return tiny.build_tiny(spec.source, settings.models_dir / spec.source)
    if spec.kind == "local":
        return Path(spec.source)
    repo_id = spec.source
    folder = hub.cached_snapshot(repo_id)
    if folder is not None:
        return folder
    if hub.is_offline():
        raise hub.not_cached_offline(spec.name, repo_id)
    if not settings.auto_download:
        raise ModelNotAvailableError(
            f"model '{spec.name}' ({repo_id}) is not downloaded: run `musicgen models pull {spec.name}` "
            "(automatic downloads are off: MUSICGEN_AUTO_DOWNLOAD=false)"
        )
    log.info("downloading %s (%s) into %s", spec.name, repo_id, hub.cache_dir())
    return hub.download(spec.name, repo_id, timeout=settings.hub_timeout)


def _model_classes(architecture: str):
    import transformers

    if architecture == "musicgen":
        return transformers.MusicgenForConditionalGeneration, transformers.MusicgenProcessor
    return transformers.MusicgenMelodyForConditionalGeneration, transformers.MusicgenMelodyProcessor


def _architecture(folder: Path, name: str) -> str:
    import json

    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"model '{name}': cannot read {folder / 'config.json'}: {error}") from error
    model_type = config.get("model_type")
    if model_type not in ARCHITECTURES:
        raise ModelLoadError(
            f"model '{name}' is a '{model_type}' model, not MusicGen: choose a musicgen checkpoint"
        )
    return model_type


def describe_loaded(
    model: Any,
    processor: Any,
    spec: ModelSpec | None,
    folder: Path | None,
    architecture: str,
    started: float,
) -> LoadedModel:
    """A LoadedModel for a MusicGen model in memory, its facts read from its own config (also
    used by the benchmark, which builds its model in memory instead of loading one)."""
    model.requires_grad_(False)
    config = model.config
    codec = config.audio_encoder
    decoder = config.decoder
    sample_rate = int(codec.sampling_rate)
    parameter = next(model.parameters())
    return LoadedModel(
        name=spec.name if spec is not None else config.name_or_path or "in-memory",
        spec=spec,
        folder=folder,
        model=model,
        processor=processor,
        device=parameter.device,
        dtype=parameter.dtype,
        architecture=architecture,
        sample_rate=sample_rate,
        frame_rate=math.ceil(sample_rate / math.prod(codec.upsampling_ratios)),
        num_codebooks=int(decoder.num_codebooks),
        channels=int(getattr(decoder, "audio_channels", 1)),
        max_positions=int(decoder.max_position_embeddings),
        trained=spec is not None and spec.trained and not (folder and tiny.is_tiny_folder(folder)),
        weights_bytes=sum(p.numel() * p.element_size() for p in model.parameters()),
        load_seconds=time.perf_counter() - started,
    )


def load_model(
    name: str | ModelSpec,
    settings: Settings,
    *,
    device: str | None = None,
    dtype: str | None = None,
) -> LoadedModel:
    spec = name if isinstance(name, ModelSpec) else resolve(name)
    target_device = resolve_device(device or settings.device)
    target_dtype = resolve_dtype(dtype or settings.dtype, target_device)
    started = time.perf_counter()
    folder = locate(spec, settings)
    architecture = _architecture(folder, spec.name)
    with _LOAD_LOCK:
        model_class, processor_class = _model_classes(architecture)
        try:
            with quiet_transformers():
                model = model_class.from_pretrained(folder, dtype=target_dtype)
                processor = processor_class.from_pretrained(folder)
        except Exception as error:
            raise ModelLoadError(f"model '{spec.name}' failed to load from {folder}: {error}") from error
        model = model.to(target_device).eval()
    loaded = describe_loaded(model, processor, spec, folder, architecture, started)
    log.info(
        "loaded model %s (%s) on %s/%s in %.2fs",
        spec.name,
        architecture,
        target_device,
        loaded.describe()["dtype"],
        loaded.load_seconds,
    )
    return loaded
