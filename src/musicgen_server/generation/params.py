"""What a caller can ask of a generation, validated once, in one place.

The same model is used by the library, the CLI and the HTTP schemas, so a bad value gets the
same message everywhere.
"""

from __future__ import annotations

import math
import secrets
import uuid
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field

MAX_SEED = 2**63 - 1
# MusicGen's codebooks have 2048 entries; top_k beyond that means "no top-k".
VOCAB_SIZE = 2048


class GenerationParams(BaseModel):
    """Sampling settings. Defaults are MusicGen's own (top_k 250, guidance 3.0)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    duration: float = Field(8.0, gt=0, description="Seconds of audio; the result is exact to the sample.")
    temperature: float = Field(1.0, gt=0, le=10, description="Softmax temperature; higher is wilder.")
    top_k: int = Field(250, ge=0, le=VOCAB_SIZE, description="Sample among the k likeliest codes; 0 = off, 1 = greedy.")
    top_p: float = Field(0.0, ge=0, le=1, description="Nucleus sampling mass; 0 = off.")
    guidance_scale: float = Field(
        3.0, ge=1, le=30, description="Classifier-free guidance; 1 = off, higher follows the prompt more."
    )
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="Same seed and settings give the same audio.")

    def with_seed(self) -> GenerationParams:
        """A copy whose seed is fixed, so the seed actually used can be reported and replayed."""
        if self.seed is not None:
            return self
        return self.model_copy(update={"seed": secrets.randbelow(2**31)})

    @property
    def uses_guidance(self) -> bool:
        return self.guidance_scale > 1.0


@dataclass(frozen=True)
class ClipShape:
    """How many samples, codec frames and decoder steps a duration takes for one model."""

    samples: int
    frames: int
    steps: int


def clip_shape(duration: float, sample_rate: int, hop_length: int, codebooks_per_channel: int) -> ClipShape:
    """Samples are rounded from the duration; frames cover them; steps add the delay pattern
    (codebook k lags k steps behind codebook 0). At least as many frames as codebooks are decoded
    so the delay pattern always fits; the extra audio is cut off."""
    samples = max(1, round(duration * sample_rate))
    frames = max(math.ceil(samples / hop_length), codebooks_per_channel)
    return ClipShape(samples=samples, frames=frames, steps=frames + codebooks_per_channel - 1)


def clip_shape_for(model, duration: float) -> ClipShape:
    """`clip_shape` with a loaded model's sample rate, hop and codebooks."""
    return clip_shape(duration, model.sample_rate, model.hop_length, model.codebooks_per_channel)


@dataclass(frozen=True)
class GenerationRequest:
    prompt: str
    params: GenerationParams = field(default_factory=GenerationParams)
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
