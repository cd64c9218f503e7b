"""GET /models: what can be asked for, what is in memory, the default and the limits."""

from __future__ import annotations

from fastapi import APIRouter

from musicgen_server.api.deps import OwnerDep, ServiceDep
from musicgen_server.errors import MusicgenError
from musicgen_server.generation import audio
from musicgen_server.generation.params import GenerationParams
from musicgen_server.models.catalog import catalog, entry
from musicgen_server.models.manager import model_key
from musicgen_server.models.registry import ALIASES, resolve

router = APIRouter(tags=["models"])


@router.get("/models")
def models(service: ServiceDep, owner: OwnerDep) -> dict:
    """Every alias with its licence and whether its weights are here (`downloaded`) and in
    memory (`loaded`); `trained: false` marks the test models whose output is noise."""
    settings = service.settings
    loaded = {model_key(model.spec): model for model in service.generator.manager.loaded()}
    default_spec = resolve(settings.model)
    entries = catalog(settings)
    if default_spec.name not in ALIASES:
        try:
            entries.append(entry(default_spec, settings))
        except MusicgenError:
            pass
    items = []
    for item in entries:
        key = model_key(resolve(item.name)) if item.name in ALIASES else model_key(default_spec)
        items.append(
            {
                **item.to_dict(),
                "loaded": key in loaded,
                "default": key == model_key(default_spec),
            }
        )
    defaults = GenerationParams()
    return {
        "default_model": default_spec.name,
        "models": items,
        "loaded": [model.describe() for model in loaded.values()],
        "limits": {
            "max_duration": settings.max_duration,
            "max_batch_size": settings.max_batch_size,
            "max_queue": settings.max_queue,
            "max_prompt_chars": settings.max_prompt_chars,
            "max_body_bytes": settings.max_body_bytes,
            "result_ttl_seconds": settings.result_ttl,
        },
        "defaults": defaults.model_dump(exclude={"seed"}),
        "formats": [
            {"name": fmt.name, "extension": fmt.extension, "media_type": fmt.media_type}
            for fmt in audio.FORMATS.values()
        ],
        "normalize": list(audio.NORMALIZE_MODES),
    }
