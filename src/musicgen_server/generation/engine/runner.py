"""The batched decoder step, on MusicGen's own modules as transformers loaded them.

The runner owns the tensors: a KV cache preallocated per slot (a conditional and an
unconditional row, for classifier-free guidance), cross-attention keys and values computed once
per request when it joins, the next input codes of every slot, and every code sampled so far. It
never decides who runs: each step it is handed the running slots and their step numbers.

One step for the running requests:

* rows: each request has a conditional row and, when it uses guidance, an unconditional row right
  after it. Rows are padded with zero rows to a multiple of `row_multiple` (see `probe_rows`).
* embeddings: the sum of the per-codebook embeddings of the slot's input codes, in transformers'
  order, plus the sinusoidal position of the slot's own step.
* per layer, with the layer's own weights: self-attention (q/k/v projections, this step's keys
  and values written into the slot's cache row at its position, attention over the slot's own
  positions 0..step), cross-attention (over the slot's own text only) and the feed-forward block,
  each behind its layer norm and residual, exactly as `MusicgenDecoderLayer` computes them.
* the final layer norm and the per-codebook `lm_heads`, then guidance and sampling
  (`generation/sampling.py`) and the request's own delay pattern for the next input codes.

Attention runs one slot at a time, over exactly that request's own keys: the same shapes as if
the request ran alone, so nothing a batch-mate does can change its numbers. The unconditional
rows see an all-zero text (transformers concatenates zeros to the encoder states and a zero
attention mask), so their cross-attention values are zero and so is its output: those rows skip
cross-attention exactly.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from musicgen_server.generation.params import GenerationParams
from musicgen_server.generation.sampling import SamplingSettings, guide, sample
from musicgen_server.models.loading import LoadedModel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SlotStep:
    """What the runner needs to know about one running request for one step."""

    slot: int
    step: int
    guided: bool


class DecoderParts:
    """References to the loaded model's modules and the facts the step needs. Nothing is copied:
    the step multiplies by the very weights transformers loaded."""

    def __init__(self, model: LoadedModel):
        musicgen = model.model
        causal = musicgen.decoder  # MusicgenForCausalLM
        decoder = causal.model.decoder  # MusicgenDecoder
        config = decoder.config
        self.model = model
        self.musicgen = musicgen
        self.device = model.device
        self.dtype = next(decoder.parameters()).dtype
        self.hidden = int(config.hidden_size)
        self.heads = int(config.num_attention_heads)
        self.head_dim = self.hidden // self.heads
        self.codebooks = int(config.num_codebooks)
        self.vocab = int(config.vocab_size)
        self.channels = model.channels
        self.embeddings = [embedding.weight for embedding in decoder.embed_tokens]
        self.positions = decoder.embed_positions.weights
        self.layers = list(decoder.layers)
        self.final_norm = decoder.layer_norm
        self.heads_weights = [head.weight for head in causal.lm_heads]
        generation = musicgen.generation_config
        start = generation.decoder_start_token_id
        self.start_token = int(start if start is not None else generation.bos_token_id)
        # Codebook k of a channel lags k steps; stereo interleaves left and right codebooks,
        # which share a delay.
        self.delays = tuple(k // self.channels for k in range(self.codebooks))
        self.max_delay = max(self.delays)
        text_hidden = musicgen.text_encoder.config.hidden_size
        self.project_text = (
            text_hidden != config.hidden_size and musicgen.decoder.config.cross_attention_hidden_size is None
        )

    def step_weights(self) -> list[torch.Tensor]:
        """Every weight a step multiplies by (cross-attention keys and values are computed at
        admission, not per step)."""
        weights = []
        for layer in self.layers:
            attention, cross = layer.self_attn, layer.encoder_attn
            weights += [attention.q_proj.weight, attention.k_proj.weight, attention.v_proj.weight]
            weights += [attention.out_proj.weight, cross.q_proj.weight, cross.out_proj.weight]
            weights += [layer.fc1.weight, layer.fc2.weight]
        return weights + list(self.heads_weights)

    def linear_shapes(self) -> list[torch.Tensor]:
        """One weight of every matrix shape a step multiplies by (for `probe_rows`)."""
        layer = self.layers[0]
        return [layer.self_attn.q_proj.weight, layer.fc1.weight, layer.fc2.weight, self.heads_weights[0]]


def encode_prompt(parts: DecoderParts, prompt: str) -> torch.Tensor:
    """The text as the decoder's cross-attention sees it, exactly as transformers' generate()
    prepares it for this prompt alone: T5 encoder, `enc_to_dec_proj`, times the attention mask."""
    model = parts.model
    inputs = model.processor(text=[prompt], padding=True, truncation=True, return_tensors="pt").to(
        parts.device
    )
    musicgen = parts.musicgen
    states = musicgen.text_encoder(
        input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], return_dict=True
    ).last_hidden_state
    if parts.project_text:
        states = musicgen.enc_to_dec_proj(states)
    return states * inputs["attention_mask"][..., None]


def cross_keys_values(parts: DecoderParts, states: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer, the cross-attention keys and values of one request's text, (1, H, T, d)."""
    shape = (1, states.shape[1], parts.heads, parts.head_dim)
    out = []
    for layer in parts.layers:
        attention = layer.encoder_attn
        keys = attention.k_proj(states).view(shape).transpose(1, 2).contiguous()
        values = attention.v_proj(states).view(shape).transpose(1, 2).contiguous()
        out.append((keys, values))
    return out


def probe_rows(weights: list[torch.Tensor], max_rows: int, linear=None) -> int | None:
    """The smallest row multiple that makes every matrix product row-invariant on this device.

    A BLAS may compute the same input row differently depending on how many rows share the
    product and where the row sits (MKL on this CPU: one row takes a GEMV path, rows of a
    product with fewer than 4 rows or in a ragged tail another; oneDNN with packed weights: one
    row differs from two or more). Padding the rows of every step to a multiple that keeps each
    row on one code path makes a request's numbers independent of its batch-mates. The probe
    multiplies a batch of identical rows at every padded size with the step's own `linear` and
    checks that all rows of all sizes agree bit for bit. The last candidate is one fixed size
    for every step; None when not even that is invariant."""
    linear = linear or F.linear
    generator = torch.Generator(device="cpu").manual_seed(1234)
    largest = max(2, -(-max_rows // 2) * 2)
    candidates = sorted({m for m in (2, 4, 8, 16) if m < largest} | {largest})
    with torch.inference_mode():
        for multiple in candidates:
            sizes = range(multiple, -(-max_rows // multiple) * multiple + 1, multiple)
            if all(_rows_agree(weight, sizes, generator, linear) for weight in weights):
                return multiple
    return None


def _rows_agree(weight: torch.Tensor, sizes, generator: torch.Generator, linear) -> bool:
    row = torch.randn(weight.shape[1], generator=generator).to(weight.device, weight.dtype)
    reference = None
    for size in sizes:
        out = linear(row.expand(size, -1).contiguous(), weight)
        if reference is None:
            reference = out[0].clone()
        if not bool((out == reference).all()):
            return False
    return True


class PackedLinear:
    """Matrix products with the decoder's weights prepacked for oneDNN (CPU, float32).

    On this CPU a decoder step is mostly matrix products of a few rows by large weights; oneDNN
    with weights reordered once into its blocked layout runs them about twice as fast as the
    default MKL GEMM (musicgen-small, 16 rows, one thread: 112 ms against 203 ms per step) and
    is row-invariant from two rows on. The packed copies cost as much memory again as the
    decoder's projection weights (1.3 GB for musicgen-small); the module weights stay as they
    are. `probe_rows` checks the result like any other product."""

    def __init__(self, weights: list[torch.Tensor], rows_hint: int):
        self._packed = {id(w): torch.ops.mkldnn._reorder_linear_weight(w, rows_hint) for w in weights}

    @staticmethod
    def available(parts: DecoderParts) -> bool:
        return (
            parts.device.type == "cpu"
            and parts.dtype == torch.float32
            and torch.backends.mkldnn.is_available()
        )

    def __call__(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        packed = self._packed.get(id(weight))
        if packed is None:
            return F.linear(x, weight)
        return torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")


class SlotState:
    """Per-slot state shared by the runners: next input codes, sampled codes, sampling settings
    and clip lengths; and the delay pattern that turns sampled codes into the next inputs."""

    def __init__(self, parts: DecoderParts, max_slots: int, max_steps: int):
        device = parts.device
        self.parts = parts
        self.device = device
        self.max_slots = max_slots
        self.max_steps = max_steps
        codebooks = parts.codebooks
        self.tokens = torch.full((max_slots, codebooks), parts.start_token, dtype=torch.int64, device=device)
        self.history = torch.zeros((max_slots, max_steps, codebooks), dtype=torch.int64, device=device)
        self.delays = torch.tensor(parts.delays, dtype=torch.int64, device=device)
        self.frames = torch.zeros(max_slots, dtype=torch.int64, device=device)
        self.temperature = torch.ones(max_slots, dtype=torch.float32, device=device)
        self.top_k = torch.zeros(max_slots, dtype=torch.int64, device=device)
        self.top_p = torch.zeros(max_slots, dtype=torch.float32, device=device)
        self.guidance = torch.ones(max_slots, dtype=torch.float32, device=device)
        self.seeds = torch.zeros(max_slots, dtype=torch.int64, device=device)
        self.top_k_host = [0] * max_slots
        self._cached_key: tuple | None = None
        self._cached: dict = {}

    def set_request(self, slot: int, params: GenerationParams, frames: int) -> None:
        self.tokens[slot] = self.parts.start_token
        self.frames[slot] = frames
        self.temperature[slot] = params.temperature
        self.top_k[slot] = params.top_k
        self.top_p[slot] = params.top_p
        self.guidance[slot] = params.guidance_scale
        self.seeds[slot] = params.seed
        self.top_k_host[slot] = params.top_k
        self._cached_key = None

    def _index(self, values: list[int]) -> torch.Tensor:
        host = torch.tensor(values, dtype=torch.int64)
        if self.device.type == "cuda":  # an asynchronous copy, never a wait for the device
            return host.pin_memory().to(self.device, non_blocking=True)
        return host

    def membership(self, batch: list[SlotStep]) -> dict:
        """Index tensors and settings for this set of running slots, rebuilt only when requests
        join or leave (the step itself allocates as little as it can)."""
        key = tuple((entry.slot, entry.guided) for entry in batch)
        if key != self._cached_key:
            slots = [entry.slot for entry in batch]
            index = self._index(slots)
            self._cached = {
                "slots": index,
                "settings": SamplingSettings(
                    temperature=self.temperature[index],
                    top_k=self.top_k[index],
                    top_p=self.top_p[index],
                    guidance=self.guidance[index],
                    seeds=self.seeds[index],
                    top_k_values=tuple(self.top_k_host[slot] for slot in slots),
                ),
                "frames": self.frames[index],
            }
            self._cached_key = key
        return self._cached

    def choose(
        self, cond: torch.Tensor, uncond: torch.Tensor, batch: list[SlotStep], steps: torch.Tensor
    ) -> None:
        """Guidance, sampling and the delay pattern for the running slots: record the codes and
        set each slot's next input codes."""
        members = self.membership(batch)
        settings: SamplingSettings = members["settings"]
        logits = guide(cond, uncond, settings.guidance)
        codes = sample(logits, settings, steps)
        slots = members["slots"]
        self.history[slots, steps] = codes
        self.tokens[slots] = self.next_inputs(codes, steps, members["frames"])

    def next_inputs(self, codes: torch.Tensor, steps: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """transformers' delay pattern for each request's own length: the input at position p
        (= step + 1) of codebook k with delay d is the start/pad code while p <= d (the pattern's
        start) and once p > frames + d (the end-of-sequence forcing `build_delay_pattern_mask`
        applies for a clip of `frames` frames), and the sampled code otherwise."""
        position = (steps + 1).unsqueeze(1)
        delays = self.delays.unsqueeze(0)
        keep = (position > delays) & (position <= frames.unsqueeze(1) + delays)
        return torch.where(keep, codes, self.parts.start_token)

    def codes(self, slot: int, start: int, end: int) -> torch.Tensor:
        """Frames [start, end) of a slot's clip, (codebooks, frames): frame f of codebook k was
        sampled at step f + delay(k)."""
        steps = torch.arange(start, end, device=self.device).unsqueeze(0) + self.delays.unsqueeze(1)
        return self.history[slot].t().gather(1, steps)


class Runner(SlotState):
    """The eager batched step (CPU, or any device without CUDA graphs)."""

    def __init__(
        self, model: LoadedModel, max_slots: int, max_steps: int, *, pack_weights: bool | None = None
    ):
        parts = DecoderParts(model)
        super().__init__(parts, max_slots, max_steps)
        # Never read before written (a request attends only to positions it wrote), so left
        # uninitialised: on CPU the pages are committed as requests fill them, not up front.
        shape = (max_slots, 2, parts.heads, max_steps, parts.head_dim)
        self.keys = [torch.empty(shape, dtype=parts.dtype, device=parts.device) for _ in parts.layers]
        self.values = [torch.empty(shape, dtype=parts.dtype, device=parts.device) for _ in parts.layers]
        self.cross: list[list[tuple[torch.Tensor, torch.Tensor]] | None] = [None] * max_slots
        self.linear = F.linear
        if pack_weights is None:
            pack_weights = PackedLinear.available(parts)
        if pack_weights:
            try:
                self.linear = PackedLinear(parts.step_weights(), rows_hint=2 * max_slots)
            except RuntimeError as error:  # no oneDNN for this build or device: the plain product
                log.info("packed weights unavailable (%s): using torch's matmul", error)
        multiple = probe_rows(parts.linear_shapes(), 2 * max_slots, self.linear)
        if multiple is None:
            log.warning(
                "matrix products on %s are not row-invariant at any padding: a request's codes may "
                "depend on its batch-mates by float rounding",
                parts.device,
            )
            multiple = 2
        self.row_multiple = multiple
        self._layout_key: tuple | None = None
        self._layout: dict = {}

    # -- requests ---------------------------------------------------------------------------
    @torch.inference_mode()
    def admit(self, slot: int, prompt: str, params: GenerationParams, frames: int) -> None:
        """Prepare a slot for a new request: its text's cross-attention keys and values, its
        settings and the start codes. The cache row needs no clearing: a request only ever
        attends to positions it has written itself."""
        states = encode_prompt(self.parts, prompt)
        self.cross[slot] = cross_keys_values(self.parts, states)
        self.set_request(slot, params, frames)

    def release(self, slot: int) -> None:
        self.cross[slot] = None

    # -- the step ---------------------------------------------------------------------------
    def _rows(self, batch: list[SlotStep]) -> dict:
        key = tuple((entry.slot, entry.guided) for entry in batch)
        if key == self._layout_key:
            return self._layout
        starts, cond, uncond, row_slot, row_half = [], [], [], [], []
        for entry in batch:
            starts.append(len(row_slot))
            cond.append(len(row_slot))
            row_slot.append(entry.slot)
            row_half.append(0)
            if entry.guided:
                uncond.append(len(row_slot))
                row_slot.append(entry.slot)
                row_half.append(1)
            else:
                uncond.append(cond[-1])  # guidance 1 keeps the conditional logits
        rows = len(row_slot)
        padded = -(-rows // self.row_multiple) * self.row_multiple
        parts = self.parts
        buffer = (padded, parts.hidden)
        self._layout = {
            "starts": starts,
            "rows": rows,
            "padded": padded,
            # Attention outputs: real rows are overwritten every layer; padding rows and the
            # unconditional rows of cross-attention stay zero for as long as this layout lasts.
            "self_out": torch.zeros(buffer, dtype=parts.dtype, device=parts.device),
            "cross_out": torch.zeros(buffer, dtype=parts.dtype, device=parts.device),
            "cond": self._index(cond),
            "uncond": self._index(uncond),
            "row_slot": self._index(row_slot),
            "row_half": self._index(row_half),
            "row_slot_host": row_slot,
        }
        self._layout_key = key
        return self._layout

    @torch.inference_mode()
    def step(self, batch: list[SlotStep]) -> None:
        """One decoder step for the running slots: sample their next codes."""
        cond, uncond = self.forward(batch)
        self.choose(cond, uncond, batch, self._index([entry.step for entry in batch]))

    @torch.inference_mode()
    def forward(self, batch: list[SlotStep]) -> tuple[torch.Tensor, torch.Tensor]:
        """The decoder for the running slots: float32 logits (requests, codebooks, vocab) of the
        conditional rows and of the unconditional ones (the conditional again for requests
        without guidance). Writes this step's keys and values into the cache."""
        parts = self.parts
        linear = self.linear
        layout = self._rows(batch)
        rows, padded = layout["rows"], layout["padded"]
        device, dtype, hidden = parts.device, parts.dtype, parts.hidden
        heads, head_dim = parts.heads, parts.head_dim
        row_steps_host = []
        for entry in batch:
            row_steps_host.extend([entry.step] * (2 if entry.guided else 1))
        row_steps = self._index(row_steps_host)

        inputs = self.tokens.index_select(0, layout["row_slot"])
        embedded = F.embedding(inputs[:, 0], parts.embeddings[0])
        for codebook in range(1, parts.codebooks):
            embedded = embedded + F.embedding(inputs[:, codebook], parts.embeddings[codebook])
        embedded = embedded + parts.positions.index_select(0, row_steps).to(dtype)
        x = torch.zeros((padded, hidden), dtype=dtype, device=device)
        x[:rows] = embedded

        starts = layout["starts"]
        row_slot, row_half = layout["row_slot"], layout["row_half"]
        for index, layer in enumerate(parts.layers):
            attention = layer.self_attn
            h = layer_norm(x, layer.self_attn_layer_norm)
            q = linear(h, attention.q_proj.weight)
            k = linear(h, attention.k_proj.weight)
            v = linear(h, attention.v_proj.weight)
            keys, values = self.keys[index], self.values[index]
            keys[row_slot, row_half, :, row_steps] = k[:rows].view(rows, heads, head_dim)
            values[row_slot, row_half, :, row_steps] = v[:rows].view(rows, heads, head_dim)
            attended = layout["self_out"]
            for entry, start in zip(batch, starts):
                count = 2 if entry.guided else 1
                length = entry.step + 1
                query = q[start : start + count].view(count, heads, 1, head_dim)
                out = F.scaled_dot_product_attention(
                    query,
                    keys[entry.slot, :count, :, :length],
                    values[entry.slot, :count, :, :length],
                )
                attended[start : start + count] = out.view(count, hidden)
            x.add_(linear(attended, attention.out_proj.weight))

            cross = layer.encoder_attn
            h = layer_norm(x, layer.encoder_attn_layer_norm)
            q = linear(h, cross.q_proj.weight)
            attended = layout["cross_out"]
            for entry, start in zip(batch, starts):
                text_keys, text_values = self.cross[entry.slot][index]  # type: ignore[index]
                query = q[start : start + 1].view(1, heads, 1, head_dim)
                out = F.scaled_dot_product_attention(query, text_keys, text_values)
                attended[start : start + 1] = out.view(1, hidden)
            x.add_(linear(attended, cross.out_proj.weight))

            h = layer_norm(x, layer.final_layer_norm)
            x.add_(linear(layer.activation_fn(linear(h, layer.fc1.weight)), layer.fc2.weight))

        h = layer_norm(x, parts.final_norm)
        logits = torch.stack([linear(h, weight) for weight in parts.heads_weights], dim=1)
        cond = logits.index_select(0, layout["cond"]).float()
        uncond = logits.index_select(0, layout["uncond"]).float()
        return cond, uncond


def layer_norm(x: torch.Tensor, norm: torch.nn.LayerNorm) -> torch.Tensor:
    return F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)

