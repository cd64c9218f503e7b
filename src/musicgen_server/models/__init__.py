"""What a model is and where it comes from. Imports no other layer of the package.

Names are imported on first use so that resolving a model name never imports torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "LoadedModel": "musicgen_server.models.loading",
    "load_model": "musicgen_server.models.loading",
    "ModelManager": "musicgen_server.models.manager",
    "ALIASES": "musicgen_server.models.registry",
    "ModelSpec": "musicgen_server.models.registry",
    "resolve": "musicgen_server.models.registry",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
