"""Text to audio, with no HTTP and no database: parameters, engines, audio files.

Names are imported on first use so that `musicgen --help` or a refused argument never pays for
importing torch and transformers.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "MusicGenerator": "musicgen_server.generation.generator",
    "GeneratedAudio": "musicgen_server.generation.handle",
    "GenerationHandle": "musicgen_server.generation.handle",
    "GenerationParams": "musicgen_server.generation.params",
    "GenerationRequest": "musicgen_server.generation.params",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
