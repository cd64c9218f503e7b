"""Which device and dtype a model runs on, from the `auto`-friendly strings in settings."""

from __future__ import annotations

import re

import torch

from musicgen_server.errors import InvalidRequestError

_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_device(spec: str) -> torch.device:
    text = (spec or "auto").strip().lower()
    if not _DEVICE.match(text):
        raise InvalidRequestError(f"device '{spec}' is not one of auto, cpu, cuda, cuda:N, mps")
    if text == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(text)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InvalidRequestError(f"device '{spec}' asked for, but this machine has no usable CUDA GPU")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InvalidRequestError(
                f"device '{spec}' asked for, but only {torch.cuda.device_count()} CUDA device(s) exist"
            )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise InvalidRequestError(f"device '{spec}' asked for, but MPS is not available here")
    return device


def resolve_dtype(spec: str, device: torch.device) -> torch.dtype:
    """`auto` is float32 on CPU (half precision is slow there), bfloat16 on GPUs that support it
    and float16 on the others."""
    if spec in _DTYPES:
        return _DTYPES[spec]
    if spec != "auto":
        raise InvalidRequestError(f"dtype '{spec}' is not one of auto, {', '.join(_DTYPES)}")
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    return torch.float32
