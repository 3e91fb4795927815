"""Embedding on Ray Data: the collection streamed through actors that each hold the backbone and the prompts.

`dbprompt index --ray [ADDRESS]` lists the database on the driver, cuts what is left to embed into
parts of `checkpoint_every` images and streams them through a pool of actors: one per GPU where
the cluster has GPUs, else one per CPU with one thread each. An actor decodes its part through the
same code as a single process (`decode_batches`, `embed_images`), embeds it and hands the vectors back; the
driver checkpoints each part as it arrives, in the chunks a single process writes, so a run
stopped at any point resumes with or without Ray, and the index is written by `write_index` as
always. Ray Data restarts a lost actor and retries the parts it held: a worker lost mid-run costs
only its unfinished part. Images must be readable at the same paths on every node.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import pickle
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import numpy as np
import torch
from tqdm import tqdm

from ..data import Record
from ..data.errors import BadInputReport, BadItem, Reporter
from ..model import PromptedCLIP
from ..runtime import Runtime, bf16_supported, default_workers

if TYPE_CHECKING:
    import types

INSTALL_HINT = "Ray is not installed; install it with: pip install 'dbprompt[ray]'"
LOCAL = "local"
LOOPBACK_ONLY = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
# What embeds a list of records in one process: (positions kept, sizes, sha256s, vectors) per batch.
Embed = Callable[..., Iterator[tuple[list[int], list[tuple[int, int]], list[str], np.ndarray]]]


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide to embed: `address` None starts a local Ray instance on 127.0.0.1 (with
    `num_cpus`, default all); "auto" or "HOST:PORT" joins a running cluster. `workers`: actors
    (default: one per GPU of the cluster, else one per CPU)."""

    address: str | None = None
    workers: int | None = None
    num_cpus: int | None = None

    def __post_init__(self) -> None:
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"--ray-workers must be at least 1, got {self.workers}")

    @classmethod
    def of(cls, ray: "RayOptions | str | bool | None", workers: int | None = None) -> "RayOptions | None":
        """From what the API and CLI take: None/False (no Ray), True or "local", an address, or RayOptions."""
        if ray is None or ray is False:
            return None
        if isinstance(ray, RayOptions):
            return ray
        return cls(None if ray is True or ray == LOCAL else str(ray), workers)


def check_ray() -> None:
    """Refuse at once, saying how to install it, when Ray is missing (without importing it: see `ray_session`)."""
    if importlib.util.find_spec("ray") is None:
        raise ValueError(INSTALL_HINT)


def _import_ray(local: bool) -> "types.ModuleType":
    if local and "ray" not in sys.modules:
        # Ray takes the machine's network address for a node's unless told it runs alone, as on macOS:
        # a local instance then listens and connects on 127.0.0.1 only (read when ray is first imported).
        os.environ.setdefault(LOOPBACK_ONLY, "0")
    try:
        import ray
        import ray.data  # noqa: F401  (the extra installs both)
    except ImportError:
        raise ValueError(INSTALL_HINT) from None
    return ray


@contextlib.contextmanager
def ray_session(options: RayOptions) -> Iterator["types.ModuleType"]:
    """Ray, started (a local instance, on the loopback only when ray was not imported before) or
    joined for the block, and shut down after; a session the caller already started is used and left running."""
    ray = _import_ray(local=options.address is None)
    if ray.is_initialized():
        yield ray
        return
    where = options.address or "a local instance"
    try:
        if options.address is None:
            ray.init(
                address=LOCAL, num_cpus=options.num_cpus, _node_ip_address="127.0.0.1", include_dashboard=False,
                log_to_driver=False, logging_level="ERROR",
            )
        else:
            ray.init(address=options.address, log_to_driver=False, logging_level="ERROR")
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ValueError(f"--ray: cannot start or reach Ray at {where}: {exc}") from None
    try:
        yield ray
    finally:
        ray.shutdown()


@dataclass
class _Part:
    """What an actor hands back for one part: per image kept, its position in the part, size, sha256 and vector."""

    kept: list[int]
    sizes: list[tuple[int, int]]
    digests: list[str]
    vectors: np.ndarray
    bad: list[BadItem]


class _Embedder:
    """A Ray actor: the prompted model on its device; one part of the collection per call."""

    def __init__(self, embed: Embed, model: Any, batch_size: int, bf16: bool | None):
        import ray

        device = "cuda" if ray.get_gpu_ids() else "cpu"
        if device == "cpu":
            torch.set_num_threads(1)  # one actor per CPU
        self.runtime = Runtime(
            device=device, bf16=bf16_supported(device) if bf16 is None else bf16,
            workers=default_workers() if device == "cuda" else 0,  # a GPU is fed by decoding processes
        )
        self.model: PromptedCLIP = ray.get(model).to(device).eval()
        self.embed = embed
        self.batch_size = batch_size

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        records: list[Record] = pickle.loads(row["records"])
        report = BadInputReport()
        part = _Part([], [], [], np.empty((0, 0), np.float32), report.items)
        vectors = []
        for kept, sizes, digests, batch in self.embed(
            self.model, records, self.runtime, batch_size=self.batch_size, skip_bad=True, report=report
        ):
            part.kept += kept
            part.sizes += sizes
            part.digests += digests
            vectors.append(batch)
        if vectors:
            part.vectors = np.concatenate(vectors)
        return {"part": row["part"], "result": pickle.dumps(part)}


@contextlib.contextmanager
def _on_cpu(model: PromptedCLIP) -> Iterator[PromptedCLIP]:
    """The driver's model on the CPU while it is shipped to the actors, whatever devices they have."""
    device = next(model.parameters()).device
    model.to("cpu")
    try:
        yield model
    finally:
        model.to(device)


def _actors(ray: "types.ModuleType", options: RayOptions) -> tuple[int, bool]:
    """(how many actors, whether each takes a GPU)."""
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    return options.workers or gpus or max(1, int(resources.get("CPU", 1))), gpus > 0


def embed_on_ray(
    embed: Embed,
    model: PromptedCLIP,
    todo: Sequence[Record],
    runtime: Runtime,
    options: RayOptions,
    *,
    batch_size: int,
    skip_bad: bool,
    report: BadInputReport,
    part_size: int,
    progress: bool,
) -> Iterator[tuple[list[int], list[tuple[int, int]], list[str], np.ndarray]]:
    """(positions in `todo`, sizes, sha256s, vectors) of each part of `part_size` images, as the actors
    finish them (in any order), each actor running `embed` (what one process runs) on its part; a
    part's bad images are reported after it is handed over."""
    if not todo:
        return
    parts = [list(todo[i : i + part_size]) for i in range(0, len(todo), part_size)]
    reporter = Reporter(skip_bad, report)
    with ray_session(options) as ray:
        workers, gpus = _actors(ray, options)
        workers = min(workers, len(parts))
        ray.data.DataContext.get_current().enable_progress_bars = False  # ours counts images, not blocks
        logging.getLogger("ray.data").setLevel(logging.ERROR)  # its per-run notes would bury ours
        with _on_cpu(model):
            shipped = ray.put(model)
        items = [{"part": i, "records": pickle.dumps(part)} for i, part in enumerate(parts)]
        embedded = ray.data.from_items(items, override_num_blocks=len(parts)).map(
            _Embedder,
            fn_constructor_kwargs={
                "embed": embed, "model": shipped, "batch_size": batch_size,
                "bf16": runtime.bf16 if (runtime.device_type == "cuda") == gpus else None,
            },
            compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=1, num_gpus=1 if gpus else 0,
        )
        with tqdm(total=len(todo), desc=f"embedding on {workers} Ray workers", unit="img", disable=not progress, leave=False) as bar:
            for row in embedded.iter_rows():
                start, result = row["part"] * part_size, pickle.loads(row["result"])
                if result.kept:
                    yield [start + i for i in result.kept], result.sizes, result.digests, result.vectors
                for item in result.bad:  # after the part's good images are checkpointed
                    reporter.add(item)
                bar.update(len(parts[row["part"]]))
