"""Errors a user can act on. Each layer raises these with a message that says what to change;
the CLI prints the message as one line and the API turns it into a 4xx (or 503) body.

They live at the top of the package, beside config, because every layer raises them and no
layer may import a layer above it.
"""

from __future__ import annotations


class MusicgenError(Exception):
    """Base class: `str(error)` is a sentence meant for the person who made the request."""

    status_code = 400

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class InvalidRequestError(MusicgenError):
    """The request itself is wrong (a value out of range, a duration over the limit)."""

    status_code = 422


class UnknownModelError(MusicgenError):
    """The name is neither an alias, a Hugging Face repo id, nor a model folder."""

    status_code = 422


class ModelNotAvailableError(MusicgenError):
    """The model is known but its weights cannot be had here (not cached and not downloadable)."""

    status_code = 503


class ModelLoadError(MusicgenError):
    """The weights are there but do not load as a MusicGen model."""

    status_code = 500


class GenerationCancelled(MusicgenError):
    """Raised by `handle.result()` for a request that was cancelled."""

    status_code = 409

    def __init__(self, message: str = "generation was cancelled"):
        super().__init__(message)
