"""The continuous-batching engine (`MUSICGEN_ENGINE=batched`, the default).

* `scheduler` - slots, admission, joins and leaves; plain Python, no tensors.
* `runner` - the batched decoder step on the loaded model's own modules, with a preallocated KV
  cache per slot and cross-attention keys computed once per request.
* `cuda_graphs` - the same step with static shapes, captured in CUDA graphs (CUDA only).
* `sampling` - guidance, per-request top-k/top-p/temperature and counter-based seeds
  (`musicgen_server.generation.sampling`), applied per step with the request's delay pattern.
* `codec` - EnCodec decoding, streamed in chunks as frames complete.
* `batched` - `BatchedEngine`: the thread that owns the device and ties them together.
"""

from __future__ import annotations

import importlib

__all__ = ["BatchedEngine"]


def __getattr__(name: str):
    # Imported on first use, so the scheduler can be imported (and tested) without torch.
    if name == "BatchedEngine":
        return importlib.import_module("musicgen_server.generation.engine.batched").BatchedEngine
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
