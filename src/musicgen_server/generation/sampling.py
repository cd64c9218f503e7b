"""Choosing the next codes: classifier-free guidance, temperature, top-k and top-p, with each
request's own settings, vectorised over the batch.

Randomness is counter-based: the uniform number behind request r's codebook c at step t is a
hash of (seed_r, t, c). So a request's audio depends only on its seed and its own logits, never
on which other requests shared the batch, when it joined, or how many numbers they consumed —
the property that makes seeds exact under continuous batching. It is integer arithmetic on
tensors, so it is the same on CPU and GPU and can be captured in a CUDA graph.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# splitmix64 constants, as signed 64-bit integers (torch has no uint64 arithmetic).
_GOLDEN = 0x9E3779B97F4A7C15 - (1 << 64)
_MIX1 = 0xBF58476D1CE4E5B9 - (1 << 64)
_MIX2 = 0x94D049BB133111EB - (1 << 64)
_STEP = 0xD1B54A32D192ED03 - (1 << 64)
_CODEBOOK = 0x8CB92BA72F3D8DD7 - (1 << 64)


def _shift_right(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's >> is arithmetic on negative numbers)."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def _mix(x: torch.Tensor) -> torch.Tensor:
    x = x ^ _shift_right(x, 30)
    x = x * _MIX1
    x = x ^ _shift_right(x, 27)
    x = x * _MIX2
    return x ^ _shift_right(x, 31)


def uniforms(seeds: torch.Tensor, steps: torch.Tensor, num_codebooks: int) -> torch.Tensor:
    """Uniform numbers in [0, 1), shaped (batch, codebooks), one per (seed, step, codebook)."""
    codebooks = torch.arange(num_codebooks, device=seeds.device, dtype=torch.int64)
    key = _mix(seeds.to(torch.int64)[:, None] * _GOLDEN + steps.to(torch.int64)[:, None] * _STEP)
    bits = _mix(key + codebooks[None, :] * _CODEBOOK)
    # The top 24 bits make an exactly representable float32 in [0, 1).
    return _shift_right(bits, 40).to(torch.float32) * (1.0 / (1 << 24))


@dataclass
class SamplingSettings:
    """Per-request settings as tensors on the engine's device, one row per request.

    `top_k_values` is the same top-k on the host: `sample` chooses how many candidates to keep
    from it, so no device value is read back mid-step."""

    temperature: torch.Tensor  # (B,) float32
    top_k: torch.Tensor  # (B,) int64, 0 = off
    top_p: torch.Tensor  # (B,) float32, 0 or 1 = off
    guidance: torch.Tensor  # (B,) float32, 1 = off
    seeds: torch.Tensor  # (B,) int64
    top_k_values: tuple[int, ...] | None = None

    @classmethod
    def from_params(cls, params: list, device: torch.device | str) -> SamplingSettings:
        """From GenerationParams (seeds already fixed)."""
        return cls(
            temperature=torch.tensor([p.temperature for p in params], dtype=torch.float32, device=device),
            top_k=torch.tensor([p.top_k for p in params], dtype=torch.int64, device=device),
            top_p=torch.tensor([p.top_p for p in params], dtype=torch.float32, device=device),
            guidance=torch.tensor([p.guidance_scale for p in params], dtype=torch.float32, device=device),
            seeds=torch.tensor([p.seed for p in params], dtype=torch.int64, device=device),
            top_k_values=tuple(int(p.top_k) for p in params),
        )

    def host_top_k(self) -> tuple[int, ...]:
        if self.top_k_values is None:
            self.top_k_values = tuple(int(k) for k in self.top_k.tolist())
        return self.top_k_values

    def select(self, index: torch.Tensor, rows: list[int]) -> SamplingSettings:
        """The settings of some rows (`index` on the device, the same `rows` on the host)."""
        top_k = self.host_top_k()
        return SamplingSettings(
            temperature=self.temperature[index],
            top_k=self.top_k[index],
            top_p=self.top_p[index],
            guidance=self.guidance[index],
            seeds=self.seeds[index],
            top_k_values=tuple(top_k[row] for row in rows),
        )


def guide(cond: torch.Tensor, uncond: torch.Tensor | None, guidance: torch.Tensor) -> torch.Tensor:
    """Classifier-free guidance, in the same arithmetic order as transformers' processor so that
    greedy decoding matches it bit for bit. Rows whose scale is 1 keep their conditional logits
    untouched (no rounding from the formula)."""
    if uncond is None:
        return cond
    scale = guidance.view(-1, *([1] * (cond.dim() - 1)))
    guided = uncond + (cond - uncond) * scale
    return torch.where(scale == 1.0, cond, guided)


def candidate_width(top_k: int, vocab: int) -> int:
    """How many of the likeliest codes a request draws from: its own top-k (all codes when top-k
    is off). It depends on the request alone, never on its batch-mates: the width changes the
    length of the softmax and cumulative sums, and so their float rounding."""
    return top_k if 0 < top_k < vocab else vocab


def sample(logits: torch.Tensor, settings: SamplingSettings, steps: torch.Tensor) -> torch.Tensor:
    """Next codes (B, C) from guided logits (B, C, V) at each request's own step.

    Each request keeps only its own top-k candidates (a partial `topk`, not a sort of the whole
    vocabulary) and requests asking for different top-k are sampled in separate groups, so a
    request's codes are the same whatever else shares its batch. top_k=1 is the plain argmax."""
    batch, _, vocab = logits.shape
    widths = [candidate_width(k, vocab) for k in settings.host_top_k()]
    if len(set(widths)) <= 1:
        return _sample_group(logits, settings, steps, widths[0] if widths else vocab)
    codes = torch.empty(logits.shape[:2], dtype=torch.int64, device=logits.device)
    for width in sorted(set(widths)):
        rows = [row for row in range(batch) if widths[row] == width]
        index = torch.tensor(rows, dtype=torch.int64, device=logits.device)
        codes[index] = _sample_group(logits[index], settings.select(index, rows), steps[index], width)
    return codes


def _sample_group(
    logits: torch.Tensor, settings: SamplingSettings, steps: torch.Tensor, width: int
) -> torch.Tensor:
    """`sample` for rows that all draw among `width` candidates."""
    codebooks, vocab = logits.shape[1], logits.shape[2]
    if width == 1:
        return logits.argmax(dim=-1)
    logits = logits.float()
    if width >= vocab:
        ordered, order = torch.sort(logits, dim=-1, descending=True)
    else:
        ordered, order = torch.topk(logits, width, dim=-1, largest=True, sorted=True)
    probs = torch.softmax(ordered / settings.temperature.view(-1, 1, 1), dim=-1)
    # Nucleus: drop a code once the likelier ones already hold top_p of the mass (the first
    # code always stays).
    top_p = torch.where((settings.top_p > 0) & (settings.top_p < 1), settings.top_p, 1.0)
    cumulative = probs.cumsum(dim=-1)
    outside = (cumulative - probs) >= top_p.view(-1, 1, 1)
    probs = probs.masked_fill(outside, 0.0)
    cumulative = probs.cumsum(dim=-1)
    draws = uniforms(settings.seeds, steps, codebooks) * cumulative[..., -1]
    picked = torch.searchsorted(cumulative, draws.unsqueeze(-1), right=True)
    # Rounding can put a draw at the very top of the mass: take the last code still in play.
    last_kept = (probs > 0).sum(dim=-1, keepdim=True) - 1
    picked = torch.minimum(picked, last_kept)
    return order.gather(-1, picked).squeeze(-1)
