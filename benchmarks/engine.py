"""Throughput of the batched engine against transformers, side by side in one run.

The model has the exact architecture of facebook/musicgen-small (T5-base text encoder, a 24-layer
decoder of width 1024 with 16 heads and 4 codebooks, EnCodec 32 kHz) with random weights, seeded:
speed does not depend on the values, and nothing is downloaded. The tokenizer is the tiny
model's T5 tokenizer (speed does not depend on it either).

Every mode serves the same requests: N prompts whose durations are spread evenly around
--duration (0.5x to 1.5x, mean --duration), with MusicGen's default sampling (top-k 250,
guidance 3). Throughput is seconds of requested audio per wall-clock second.

  baseline_sequential   transformers' generate(), one request at a time
  transformers_batched  all prompts in one generate() call: it runs to the longest duration and
                        only the audio asked for counts
  engine_together       the batched engine, all requests submitted at once
  engine_staggered      the batched engine, request i submitted at i * gap, where gap spreads the
                        arrivals over half of engine_together's wall time

Step times at batch 1 are the median time between consecutive decoder steps of one request
(transformers: between calls of a logits processor; engine: between progress callbacks).
first_audio_s is the mean time from submission to the first streamed chunk in engine_together.

The last line printed is one JSON object with the headline numbers.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import math
import statistics
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from musicgen_server.generation import GenerationParams, GenerationRequest
from musicgen_server.generation.engine import BatchedEngine
from musicgen_server.generation.params import clip_shape_for
from musicgen_server.models import tiny
from musicgen_server.models.hf_logging import quiet_transformers
from musicgen_server.models.loading import LoadedModel, describe_loaded

PROMPTS = [
    "upbeat electronic music with drums",
    "calm piano with rain",
    "epic orchestral soundtrack with brass and choir",
    "lofi hip hop beat",
    "funk bass groove with guitar",
    "ambient synth pad, slow and warm",
    "rock song with loud guitars and heavy drums",
    "jazz trio with soft brass",
]


def build_musicgen_small(device: torch.device, dtype: torch.dtype) -> LoadedModel:
    """facebook/musicgen-small's architecture (its config.json values) with seeded random weights."""
    from transformers import (
        MusicgenConfig,
        MusicgenDecoderConfig,
        MusicgenForConditionalGeneration,
        T5Config,
    )

    with quiet_transformers():  # its pad id check is noise for MusicGen configs
        text = T5Config(
            vocab_size=32128,
            d_model=768,
            d_kv=64,
            d_ff=3072,
            num_layers=12,
            num_heads=12,
            relative_attention_num_buckets=32,
            feed_forward_proj="relu",
            is_encoder_decoder=False,
        )
        codec = tiny.encodec_32k_config(codebook_dim=128, hidden_size=128, num_filters=64, num_lstm_layers=2)
        decoder = MusicgenDecoderConfig(
            vocab_size=2048,
            max_position_embeddings=2048,
            num_hidden_layers=24,
            ffn_dim=4096,
            num_attention_heads=16,
            hidden_size=1024,
            num_codebooks=4,
            audio_channels=1,
            activation_function="gelu",
        )
        config = MusicgenConfig(text_encoder=text, audio_encoder=codec, decoder=decoder)
    started = time.perf_counter()
    with quiet_transformers(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = MusicgenForConditionalGeneration(config)
        tiny.fill_codebooks(model)
        model.generation_config = tiny.musicgen_generation_config()
    model = model.to(device=device, dtype=dtype).eval()
    loaded = describe_loaded(model, tiny.build_processor(), None, None, "musicgen", started)
    loaded.name = "musicgen-small-architecture"
    return loaded


def workload(count: int, duration: float) -> list[tuple[str, float]]:
    """Durations spread evenly over [0.5, 1.5] x duration (mean: duration), interleaved so that
    long and short requests alternate."""
    if count == 1:
        spread = [duration]
    else:
        spread = [round(duration * (0.5 + i / (count - 1)), 2) for i in range(count)]
    order = [spread[i // 2] if i % 2 == 0 else spread[-1 - i // 2] for i in range(count)]
    return [(PROMPTS[i % len(PROMPTS)], order[i]) for i in range(count)]


def steps_for(model: LoadedModel, duration: float) -> int:
    return clip_shape_for(model, duration).steps


class StepClock:
    """A logits processor that only records when each decoder step reached it."""

    def __init__(self):
        self.times: list[float] = []

    def __call__(self, input_ids, scores):
        self.times.append(time.perf_counter())
        return scores


def median_step_ms(times: list[float]) -> float:
    gaps = [b - a for a, b in itertools.pairwise(times)]
    return statistics.median(gaps) * 1000 if gaps else float("nan")


def transformers_generate(
    model: LoadedModel, prompts: list[str], duration: float, clock: StepClock | None = None
):
    inputs = model.processor(text=prompts, padding=True, return_tensors="pt").to(model.device)
    with torch.inference_mode(), quiet_transformers():
        audio = model.model.generate(
            **inputs,
            do_sample=True,
            top_k=250,
            guidance_scale=3.0,
            max_new_tokens=steps_for(model, duration),
            logits_processor=[clock] if clock else None,
        )
    return audio[..., : round(duration * model.sample_rate)]


def _transformers_step_ms(model: LoadedModel, request: tuple[str, float]) -> float:
    clock = StepClock()
    transformers_generate(model, [request[0]], request[1], clock)
    return median_step_ms(clock.times)


def _number(value: float, digits: int) -> float | None:
    return None if math.isnan(value) else round(value, digits)  # skipped -> null


def sync(model: LoadedModel) -> None:
    if model.device.type == "cuda":
        torch.cuda.synchronize(model.device)


def run_baseline(model, requests):
    clock = StepClock()
    started = time.perf_counter()
    for index, (prompt, duration) in enumerate(requests):
        transformers_generate(model, [prompt], duration, clock if index == 0 else None)
    sync(model)
    return time.perf_counter() - started, median_step_ms(clock.times)


def run_transformers_batched(model, requests):
    started = time.perf_counter()
    longest = max(duration for _, duration in requests)
    transformers_generate(model, [prompt for prompt, _ in requests], longest)
    sync(model)
    return time.perf_counter() - started


def run_engine(engine: BatchedEngine, requests, gap: float = 0.0, seed: int = 0):
    """Submit the requests (request i at i * gap), consume their streams, wait for all."""
    first_chunk: dict[int, float] = {}
    submitted: dict[int, float] = {}
    handles = []
    consumers = []

    def consume(index, handle):
        for _ in handle.chunks(timeout=3600):
            first_chunk.setdefault(index, time.perf_counter())

    started = time.perf_counter()
    for index, (prompt, duration) in enumerate(requests):
        due = started + index * gap
        while (wait := due - time.perf_counter()) > 0:
            time.sleep(wait)
        submitted[index] = time.perf_counter()
        handle = engine.submit(
            GenerationRequest(prompt, GenerationParams(duration=duration, seed=seed + index))
        )
        handles.append(handle)
        thread = threading.Thread(target=consume, args=(index, handle), daemon=True)
        thread.start()
        consumers.append(thread)
    clips = [handle.result() for handle in handles]
    wall = time.perf_counter() - started
    for thread in consumers:
        thread.join()
    first_audio = statistics.mean(first_chunk[i] - submitted[i] for i in first_chunk)
    batch = statistics.mean(clip.timings["batch_size"] for clip in clips)
    return wall, first_audio, batch


def engine_step_ms(engine: BatchedEngine, duration: float) -> tuple[float, float]:
    times: list[float] = []
    handle = engine.submit(GenerationRequest(PROMPTS[0], GenerationParams(duration=duration, seed=99)))
    handle.add_progress_callback(lambda h: times.append(time.perf_counter()))
    started = time.perf_counter()
    first = next(iter(handle.chunks(timeout=3600)))
    first_audio = time.perf_counter() - started
    del first
    handle.result()
    return median_step_ms(times), first_audio


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=8, help="number of requests (default 8)")
    parser.add_argument(
        "--duration", type=float, default=4.0, help="mean seconds of audio per request (default 4)"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--dtype", default=None, help="float32 (CPU default), bfloat16 (CUDA default), float16"
    )
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    parser.add_argument("--quick", action="store_true", help="8 requests of about 1 s")
    parser.add_argument(
        "--skip-sequential",
        action="store_true",
        help="skip the one-at-a-time baseline (long with many requests); its numbers are null",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.requests, args.duration = 8, 1.0
    logging.basicConfig(level=logging.WARNING)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)

    model = build_musicgen_small(device, dtype)
    requests = workload(args.requests, args.duration)
    audio = sum(duration for _, duration in requests)
    longest = max(duration for _, duration in requests)
    print(
        f"musicgen-small architecture (random weights) on {device} / {str(dtype).removeprefix('torch.')}, "
        f"{threads} CPU threads; built in {model.load_seconds:.1f}s",
        flush=True,
    )
    print(
        f"{len(requests)} requests, durations {[d for _, d in requests]} s ({audio:.2f} s of audio)",
        flush=True,
    )

    engine = BatchedEngine(
        model, max_batch_size=args.max_batch_size, max_duration=longest, cpu_threads=threads
    )
    engine.wait_ready()
    # Warm-up: first calls allocate and pick kernels; nothing below is timed with them.
    transformers_generate(model, [PROMPTS[0]], 0.1)
    engine.submit(GenerationRequest(PROMPTS[0], GenerationParams(duration=0.1, seed=1))).result()

    if args.skip_sequential:
        baseline_wall, step_transformers = float("nan"), _transformers_step_ms(model, requests[0])
    else:
        baseline_wall, step_transformers = run_baseline(model, requests)
    print(f"  baseline_sequential   {baseline_wall:8.1f} s", flush=True)
    batched_wall = run_transformers_batched(model, requests)
    print(f"  transformers_batched  {batched_wall:8.1f} s", flush=True)
    together_wall, first_audio, together_batch = run_engine(engine, requests)
    print(f"  engine_together       {together_wall:8.1f} s", flush=True)
    gap = together_wall / (2 * len(requests))
    staggered_wall, staggered_first, staggered_batch = run_engine(engine, requests, gap=gap, seed=100)
    print(f"  engine_staggered      {staggered_wall:8.1f} s (arrivals every {gap:.2f} s)", flush=True)
    step_engine, first_audio_alone = engine_step_ms(engine, min(args.duration, longest))
    engine.close()

    results = {
        "baseline_sequential": audio / baseline_wall,  # nan when skipped
        "transformers_batched": audio / batched_wall,
        "engine_together": audio / together_wall,
        "engine_staggered": audio / staggered_wall,
    }
    rows = [
        ("baseline_sequential", baseline_wall, "transformers generate(), one request at a time"),
        ("transformers_batched", batched_wall, f"one generate() of {len(requests)} prompts to {longest:g} s"),
        ("engine_together", together_wall, f"all submitted at once; mean batch {together_batch:.1f}"),
        ("engine_staggered", staggered_wall, f"one every {gap:.2f} s; mean batch {staggered_batch:.1f}"),
    ]
    print()
    print("| mode | wall s | audio s / wall s | x sequential | notes |")
    print("| --- | ---: | ---: | ---: | --- |")
    for name, wall, note in rows:
        ratio = results[name] / results["baseline_sequential"]
        print(f"| {name} | {wall:.1f} | {results[name]:.3f} | {ratio:.2f} | {note} |")
    print()
    print(f"decoder step at batch 1: engine {step_engine:.1f} ms, transformers {step_transformers:.1f} ms")
    print(
        f"first audio: {first_audio:.2f} s (mean, engine_together), {staggered_first:.2f} s (engine_staggered), "
        f"{first_audio_alone:.2f} s (one request alone)"
    )
    summary = {
        **{key: _number(value, 4) for key, value in results.items()},
        "ratio_vs_sequential": _number(results["engine_together"] / results["baseline_sequential"], 3),
        "ratio_staggered_vs_transformers_batched": round(
            results["engine_staggered"] / results["transformers_batched"], 3
        ),
        "step_ms_batch1_engine": round(step_engine, 2),
        "step_ms_batch1_transformers": round(step_transformers, 2),
        "first_audio_s": round(first_audio, 3),
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
    }
    print(json.dumps(summary), flush=True)
    return summary


if __name__ == "__main__":
    main()
