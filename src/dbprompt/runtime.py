"""Where and in what precision to run: detected from the hardware, never assumed."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel


def pick_device(requested: str = "auto") -> str:
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {requested}: no CUDA device is available")
    return requested


def bf16_supported(device: str) -> bool:
    """Whether bf16 autocast pays off: Ampere+ GPUs, and CPUs with AMX tiles.

    Measured on a 2-core AVX512-BF16 CPU without AMX: bf16 training ran 1.3-2x slower
    than fp32 (benchmarks/bench_core.py), so AVX512-BF16 alone does not count.
    """
    if device.startswith("cuda"):
        return torch.cuda.is_bf16_supported()
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool(probe and probe())


def resolve_bf16(device: str, requested: bool | None) -> bool:
    """None means: on where the hardware supports it."""
    return bf16_supported(device) if requested is None else requested


@contextlib.contextmanager
def precision(device: str, bf16: bool) -> Iterator[None]:
    """bf16 autocast; on CPU also the math attention kernel, which trains faster there under bf16."""
    device_type = "cuda" if device.startswith("cuda") else "cpu"
    with contextlib.ExitStack() as stack:
        if bf16:
            stack.enter_context(torch.autocast(device_type, dtype=torch.bfloat16))
            if device_type == "cpu":
                stack.enter_context(sdpa_kernel([SDPBackend.MATH]))
        yield
