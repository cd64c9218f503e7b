"""The decoder step with static shapes, captured in CUDA graphs.

STATUS: written for CUDA and not yet run on a GPU. Its arithmetic (`StaticRunner` with
`capture=False`) runs on CPU in the tests, which check greedy parity with transformers'
generate(); the capture and replay themselves have not been exercised. The CPU engine never
imports this module.

Differences from the eager `Runner`:

* Weights stay in the dtype they were loaded in (bfloat16/float16 on GPUs); logits are cast to
  float32 for guidance and sampling.
* Shapes are static per (batch bucket, key-length bucket, text-length bucket): the batch is
  padded to the next captured size (1, 2, 4, 8, ... slots; the scheduler keeps running slots
  packed at the front), every slot has both a conditional and an unconditional row (rows are
  `[slot0 cond, slot0 uncond, slot1 cond, ...]`, so a prefix of the cache is a plain view),
  self-attention reads the first `L` cache positions with a mask for each slot's own length, and
  cross-attention reads a fixed-capacity text buffer with a mask for each prompt's length.
* Each slot's position lives on the device and advances on the device, so a step uploads
  nothing; inputs, cache and positions are static buffers the graphs read in place.
* Only the decoder forward (embeddings to logits) is captured. Guidance, sampling (grouped by
  the host-known top-k of the running requests) and the delay pattern run eagerly on the
  device after the replay; sampled codes stay on the device until a stream chunk or a finished
  request copies them to the host.

Reproducibility on CUDA: a request's codes are the same run after run for the same arrivals, but
unlike the CPU path they are not guaranteed bit-identical across batch compositions: the padded
batch size and the key-length bucket change which cuBLAS/attention kernels run and so the float
rounding of the logits.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from musicgen_server.generation.engine.runner import (
    DecoderParts,
    SlotState,
    SlotStep,
    cross_keys_values,
    encode_prompt,
    layer_norm,
)
from musicgen_server.generation.params import GenerationParams
from musicgen_server.models.loading import LoadedModel

log = logging.getLogger(__name__)

KEY_BUCKETS = (128, 256, 512, 1024)
TEXT_BUCKETS = (32, 128)


def _bucket(value: int, buckets: list[int]) -> int:
    for size in buckets:
        if value <= size:
            return size
    return buckets[-1]


class StaticRunner(SlotState):
    """The static-shape step; `GraphRunner` captures it in CUDA graphs."""

    def __init__(
        self, model: LoadedModel, max_slots: int, max_steps: int, *, text_capacity: int | None = None
    ):
        parts = DecoderParts(model)
        super().__init__(parts, max_slots, max_steps)
        device, dtype = parts.device, parts.dtype
        heads, head_dim = parts.heads, parts.head_dim
        shape = (max_slots, 2, heads, max_steps, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in parts.layers]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in parts.layers]
        tokenizer_limit = getattr(model.processor.tokenizer, "model_max_length", 512)
        self.text_capacity = int(text_capacity or min(int(tokenizer_limit), 512))
        text_shape = (max_slots, heads, self.text_capacity, head_dim)
        self.text_keys = [torch.zeros(text_shape, dtype=dtype, device=device) for _ in parts.layers]
        self.text_values = [torch.zeros(text_shape, dtype=dtype, device=device) for _ in parts.layers]
        # Every slot attends to at least one key, so an empty slot never makes NaNs.
        self.text_lengths = torch.ones(max_slots, dtype=torch.int64, device=device)
        self.text_lengths_host = [1] * max_slots
        self.positions = torch.zeros(max_slots, dtype=torch.int64, device=device)
        self.key_positions = torch.arange(max_steps, device=device)
        self.text_positions = torch.arange(self.text_capacity, device=device)
        self.batch_buckets = sorted(
            {1 << i for i in range(max_slots.bit_length()) if (1 << i) <= max_slots} | {max_slots}
        )
        self.key_buckets = sorted({size for size in KEY_BUCKETS if size < max_steps} | {max_steps})
        self.text_buckets = sorted(
            {size for size in TEXT_BUCKETS if size < self.text_capacity} | {self.text_capacity}
        )
        self._rows: dict[int, dict[str, torch.Tensor]] = {}

    # -- requests ---------------------------------------------------------------------------
    @torch.inference_mode()
    def admit(self, slot: int, prompt: str, params: GenerationParams, frames: int) -> None:
        states = encode_prompt(self.parts, prompt)
        length = states.shape[1]
        if length > self.text_capacity:
            raise ValueError(f"prompt is {length} tokens, above this engine's {self.text_capacity}")
        for index, (keys, values) in enumerate(cross_keys_values(self.parts, states)):
            self.text_keys[index][slot, :, :length] = keys[0]
            self.text_values[index][slot, :, :length] = values[0]
        self.text_lengths[slot] = length
        self.text_lengths_host[slot] = length
        self.positions[slot] = 0
        self.set_request(slot, params, frames)

    def release(self, slot: int) -> None:
        # An empty slot inside the padded batch still runs: keep its position inside the cache.
        # Its other buffers are overwritten by the next request that takes it.
        self.positions[slot] = 0

    # -- the step ---------------------------------------------------------------------------
    def _row_index(self, batch: int) -> dict[str, torch.Tensor]:
        if batch not in self._rows:
            device = self.device
            slots = torch.arange(batch, device=device)
            self._rows[batch] = {
                "slot": _twice(slots),
                "half": torch.arange(2, device=device).repeat(batch),
            }
        return self._rows[batch]

    def forward(self, batch: int, key_length: int, text_length: int) -> torch.Tensor:
        """Logits (2 * batch, codebooks, vocab) for slots [0, batch), reading and writing only
        static buffers; every shape depends on the three sizes alone."""
        parts = self.parts
        dtype, hidden, heads, head_dim = parts.dtype, parts.hidden, parts.heads, parts.head_dim
        rows = 2 * batch
        index = self._row_index(batch)
        positions = self.positions[:batch]
        inputs = self.tokens[:batch]
        embedded = F.embedding(inputs[:, 0], parts.embeddings[0])
        for codebook in range(1, parts.codebooks):
            embedded = embedded + F.embedding(inputs[:, codebook], parts.embeddings[codebook])
        embedded = embedded + parts.positions.index_select(0, positions).to(dtype)
        x = _twice(embedded)
        row_positions = _twice(positions)
        visible = self.key_positions[:key_length].unsqueeze(0) <= positions.unsqueeze(1)
        self_mask = _twice(_additive(visible, dtype)).view(rows, 1, 1, key_length)
        text_visible = self.text_positions[:text_length].unsqueeze(0) < self.text_lengths[:batch].unsqueeze(1)
        text_mask = _additive(text_visible, dtype).view(batch, 1, 1, text_length)
        for layer_index, layer in enumerate(parts.layers):
            attention = layer.self_attn
            h = layer_norm(x, layer.self_attn_layer_norm)
            q = F.linear(h, attention.q_proj.weight)
            k = F.linear(h, attention.k_proj.weight)
            v = F.linear(h, attention.v_proj.weight)
            keys, values = self.keys[layer_index], self.values[layer_index]
            keys[index["slot"], index["half"], :, row_positions] = k.view(rows, heads, head_dim)
            values[index["slot"], index["half"], :, row_positions] = v.view(rows, heads, head_dim)
            cache_shape = (rows, heads, self.max_steps, head_dim)
            out = F.scaled_dot_product_attention(
                q.view(rows, heads, 1, head_dim),
                keys[:batch].view(cache_shape)[:, :, :key_length],
                values[:batch].view(cache_shape)[:, :, :key_length],
                attn_mask=self_mask,
            )
            x = x + F.linear(out.reshape(rows, hidden), attention.out_proj.weight)

            cross = layer.encoder_attn
            h = layer_norm(x, layer.encoder_attn_layer_norm)
            q = F.linear(h, cross.q_proj.weight).view(batch, 2, heads, head_dim)[:, 0]
            out = F.scaled_dot_product_attention(
                q.unsqueeze(2),
                self.text_keys[layer_index][:batch, :, :text_length],
                self.text_values[layer_index][:batch, :, :text_length],
                attn_mask=text_mask,
            )
            # Unconditional rows see an all-zero text: their cross-attention output is zero.
            attended = torch.zeros((batch, 2, hidden), dtype=dtype, device=x.device)
            attended[:, 0] = out.reshape(batch, hidden)
            x = x + F.linear(attended.view(rows, hidden), cross.out_proj.weight)

            h = layer_norm(x, layer.final_layer_norm)
            x = x + F.linear(layer.activation_fn(F.linear(h, layer.fc1.weight)), layer.fc2.weight)
        h = layer_norm(x, parts.final_norm)
        return torch.stack([F.linear(h, weight) for weight in parts.heads_weights], dim=1)

    def sizes(self, batch: list[SlotStep]) -> tuple[int, int, int]:
        """The static sizes that cover the running slots, from host-side integers only."""
        high_water = max(entry.slot for entry in batch) + 1
        padded = _bucket(high_water, self.batch_buckets)
        longest = max(entry.step for entry in batch) + 1
        key_length = _bucket(longest, self.key_buckets)
        text = max(self.text_lengths_host[slot] for slot in range(padded))
        return padded, key_length, _bucket(text, self.text_buckets)

    def logits(self, batch: int, key_length: int, text_length: int) -> torch.Tensor:
        return self.forward(batch, key_length, text_length)

    @torch.inference_mode()
    def step(self, batch: list[SlotStep]) -> None:
        sizes = self.sizes(batch)
        logits = self.logits(*sizes)
        members = self.membership(batch)
        slots = members["slots"]
        steps = self.positions.index_select(0, slots)
        cond = logits[0::2].index_select(0, slots).float()
        uncond = logits[1::2].index_select(0, slots).float()
        self.choose(cond, uncond, batch, steps)
        self.positions.index_add_(0, slots, torch.ones_like(slots))


def _twice(x: torch.Tensor) -> torch.Tensor:
    """Each row twice in a row ([a, a, b, b, ...]): the conditional and unconditional rows of a
    slot. A view and a copy, never a host synchronisation."""
    return x.unsqueeze(1).expand(x.shape[0], 2, *x.shape[1:]).reshape(2 * x.shape[0], *x.shape[1:])


def _additive(visible: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    zero = torch.zeros((), dtype=dtype, device=visible.device)
    return torch.where(visible, zero, torch.finfo(dtype).min)


class GraphRunner(StaticRunner):
    """`StaticRunner` whose forward is captured once per size in a CUDA graph and replayed.

    Graphs are captured lazily the first time a (batch, key length, text length) bucket is
    needed, after a warm-up run on a side stream, and share one memory pool (they never run at
    the same time). A replay reads the static buffers in place and writes its logits to a
    buffer owned by the graph."""

    def __init__(self, model: LoadedModel, max_slots: int, max_steps: int, **options):
        if model.device.type != "cuda":
            raise ValueError("CUDA graphs need a CUDA device")
        super().__init__(model, max_slots, max_steps, **options)
        self.pool = torch.cuda.graph_pool_handle()
        self.graphs: dict[tuple[int, int, int], tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self.capture_failed: BaseException | None = None
        log.info(
            "CUDA graphs for %s: batch buckets %s, key buckets %s, text buckets %s",
            model.name,
            self.batch_buckets,
            self.key_buckets,
            self.text_buckets,
        )

    def logits(self, batch: int, key_length: int, text_length: int) -> torch.Tensor:
        if self.capture_failed is not None:
            return self.forward(batch, key_length, text_length)
        key = (batch, key_length, text_length)
        entry = self.graphs.get(key)
        if entry is None:
            try:
                entry = self._capture(*key)
            except Exception as error:  # keep serving, without graphs, and say why once
                log.exception("CUDA graph capture failed for %s; running the static step eagerly", key)
                self.capture_failed = error
                return self.forward(batch, key_length, text_length)
            self.graphs[key] = entry
        graph, output = entry
        graph.replay()
        return output

    def _capture(self, batch: int, key_length: int, text_length: int):
        # The warm-up writes this step's keys and values at the slots' current positions; the
        # replay right after writes the very same values there, so it changes nothing.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            self.forward(batch, key_length, text_length)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            output = self.forward(batch, key_length, text_length)
        return graph, output
