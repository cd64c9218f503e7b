"""The HTTP face: `create_app(settings)`, schemas, dependencies (auth, store), routes, metrics.

`create_app` is imported on first use so that `import musicgen_server.api.schemas` (or the CLI's
help) does not pay for starting anything.
"""

from __future__ import annotations

__all__ = ["create_app"]


def __getattr__(name: str):
    if name == "create_app":
        from musicgen_server.api.app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
