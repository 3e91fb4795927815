"""Where and in what precision to run: detected from the hardware once per command, never assumed.

torch is imported where it is asked about, not here: a server running ONNX towers never imports it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from dataclasses import dataclass
from typing import Iterator


def pick_device(requested: str = "auto") -> str:
    """`auto`: CUDA when present, else the CPU; an explicit CUDA device must exist."""
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {requested}: no CUDA device is available")
    return requested


def bf16_supported(device: str) -> bool:
    """Whether bf16 autocast pays off: Ampere+ GPUs, and CPUs with AMX tiles.

    Measured on a 2-core AVX512-BF16 CPU without AMX: bf16 training ran 1.3-2x slower
    than fp32 (BENCHMARKS.md, Precision), so AVX512-BF16 alone does not count.
    """
    import torch

    if device.startswith("cuda"):
        return torch.cuda.is_bf16_supported()
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool(probe and probe())


def default_workers() -> int:
    """Image-decoding worker processes: one core is left to the model (none on a 1-core machine)."""
    return min(4, max(0, (os.cpu_count() or 1) - 1))


# What runs the towers: PyTorch, or the prompt file's towers exported to ONNX Runtime (index, search, serve).
ENGINES = ("torch", "onnx")


@dataclass(frozen=True)
class Runtime:
    """A resolved device, precision and decoding parallelism, passed down instead of (device, bf16) pairs."""

    device: str = "cpu"
    bf16: bool = False
    # Worker processes decoding images while the model computes (0: decode in the main process).
    workers: int = 0
    # This process's place in a torchrun training run (see training/distributed.py).
    rank: int = 0
    world: int = 1
    # "onnx": `dbprompt index/search/serve --runtime onnx` (index/onnx_embed.py, searcher.py); else PyTorch.
    engine: str = "torch"

    @property
    def main(self) -> bool:
        """The one process that validates, logs and writes."""
        return self.rank == 0

    @classmethod
    def resolve(cls, device: str = "auto", bf16: bool | None = None, workers: int | None = None, engine: str = "torch") -> "Runtime":
        """`auto` picks CUDA when present; bf16 None means on where the hardware pays off."""
        if engine not in ENGINES:
            raise ValueError(f"--runtime must be one of {ENGINES}, got {engine!r}")
        device = pick_device(device)
        return cls(
            device=device,
            bf16=bf16_supported(device) if bf16 is None else bf16,
            workers=default_workers() if workers is None else workers,
            engine=engine,
        )

    @classmethod
    def for_onnx_queries(cls, device: str = "auto", workers: int | None = None) -> Runtime:
        """For a search or server of indexes built with `--runtime onnx`, which may need no torch at all: `auto`
        is CUDA where ONNX Runtime has its CUDA provider, and bf16 is off (the towers are fp32 or int8)."""
        if device == "auto":
            from .onnx.towers import require

            device = "cuda" if "CUDAExecutionProvider" in require("onnxruntime").get_available_providers() else "cpu"
        return cls(device=device, workers=default_workers() if workers is None else workers, engine="onnx")

    def replace(self, **changes) -> "Runtime":
        return dataclasses.replace(self, **changes)

    @property
    def device_type(self) -> str:
        return "cuda" if self.device.startswith("cuda") else "cpu"

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        """bf16 autocast when on; on CPU also the math attention kernel, which trains faster there under bf16."""
        with contextlib.ExitStack() as stack:
            if self.bf16:
                import torch
                from torch.nn.attention import SDPBackend, sdpa_kernel

                stack.enter_context(torch.autocast(self.device_type, dtype=torch.bfloat16))
                if self.device_type == "cpu":
                    stack.enter_context(sdpa_kernel([SDPBackend.MATH]))
            yield

    def describe(self) -> str:
        ranks = f", {self.world} processes" if self.world > 1 else ""
        engine = ", ONNX Runtime" if self.engine == "onnx" else ""
        return f"device {self.device}, bf16 {'on' if self.bf16 else 'off'}{ranks}{engine}"


CPU = Runtime()
