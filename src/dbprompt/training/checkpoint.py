"""Checkpoints: safetensors for tensors, JSON for the rest, written atomically; never pickle.

A checkpoint holds the trained parameters, the best ones so far, the optimizer's moments, the
scheduler and the run's position, which is all a resumed run needs to replay exactly what an
uninterrupted run would have done.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ..atomic import atomic_path
from .config import TrainConfig

CHECKPOINT = "checkpoint.safetensors"
# Options removed since, and the value every checkpoint made with them used unless asked otherwise:
# such a checkpoint still resumes when it used that value.
_REMOVED = {"cache_zero_shot": True, "hard_negative_group": 0}
# Options added since, and what their absence from an older checkpoint meant.
_ABSENT_MEANS = {"calibrate_temperature": False, "image_backward": 1.0}
# Options of how a run is carried out, not of what it computes: a run may resume with other values
# (say a smaller image cache on a machine with less memory).
_RUN_ONLY = ("checkpoint_every", "image_cache_mb")


@dataclass
class TrainState:
    """Where a run is: enough, with the optimizer and parameters, to resume exactly."""

    epoch: int = 0
    micro: int = 0  # micro-batches done in the current epoch
    step: int = 0  # optimizer steps done in total
    best_score: float = -math.inf
    best_epoch: int = -1  # 0 = the state before training
    history: list[dict] = field(default_factory=list)
    # The current epoch's micro-batch losses so far: a run resumed inside an epoch (or at its end, before its
    # validation) still logs the whole epoch's mean training loss.
    epoch_losses: list[float] = field(default_factory=list)


def checkpoint_parameters(path: str | Path) -> dict[str, torch.Tensor] | None:
    """The trained parameters a run's checkpoint holds, by name (the model's own names); None when the
    safetensors file at `path` is not such a checkpoint (plain weights, say)."""
    with safe_open(str(path), "pt") as f:
        if "train_config" not in (f.metadata() or {}):
            return None
        return {k[len("param/") :]: f.get_tensor(k) for k in f.keys() if k.startswith("param/")}


def _comparable(cfg: dict) -> dict:
    return json.loads(json.dumps(cfg))


class Checkpointer:
    """Saves and restores one run in `work_dir` (nothing is written without one)."""

    def __init__(self, work_dir: str | Path | None, cfg: TrainConfig):
        self.path = Path(work_dir) / CHECKPOINT if work_dir else None
        self.cfg = cfg

    def save(
        self,
        named: dict[str, torch.nn.Parameter],
        best: dict[str, torch.Tensor],
        optimizer: torch.optim.Optimizer,
        order: list[str],
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        state: TrainState,
    ) -> None:
        """`order`: the parameter names in the optimizer's own index order."""
        if self.path is None:
            return
        tensors = {f"param/{n}": p.detach().cpu().contiguous() for n, p in named.items()}
        tensors.update({f"best/{n}": t.cpu().contiguous() for n, t in best.items()})
        opt = optimizer.state_dict()
        for idx, slots in opt["state"].items():
            for key, value in slots.items():
                tensors[f"opt/{order[idx]}/{key}"] = value.detach().cpu().contiguous().reshape(value.shape)
        meta = {
            "state": json.dumps(dataclasses.asdict(state)),
            "train_config": json.dumps(dataclasses.asdict(self.cfg)),
            "param_groups": json.dumps(opt["param_groups"]),
            "scheduler": json.dumps(scheduler.state_dict()),
        }
        with atomic_path(self.path) as tmp:
            save_file(tensors, str(tmp), metadata=meta)

    def load(
        self,
        named: dict[str, torch.nn.Parameter],
        optimizer: torch.optim.Optimizer,
        order: list[str],
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        device: str,
    ) -> tuple[TrainState, dict[str, torch.Tensor]] | None:
        """Restore parameters, optimizer and scheduler in place; the run's state and best parameters, or None."""
        if self.path is None or not self.path.exists():
            return None
        with safe_open(str(self.path), "pt") as f:
            meta = f.metadata()
        tensors = load_file(str(self.path))
        self._check_options(json.loads(meta["train_config"]))
        missing = [n for n in named if f"param/{n}" not in tensors]
        if missing:
            raise ValueError(f"{self.path}: checkpoint lacks parameters {missing[:3]} (another model or method?)")
        with torch.no_grad():
            for n, p in named.items():
                p.copy_(tensors[f"param/{n}"])
        state: dict[int, dict] = {}
        for key, value in tensors.items():
            if key.startswith("opt/"):
                name, slot = key[4:].rsplit("/", 1)
                state.setdefault(order.index(name), {})[slot] = value.to(device)
        optimizer.load_state_dict({"state": state, "param_groups": json.loads(meta["param_groups"])})
        scheduler.load_state_dict(json.loads(meta["scheduler"]))
        best = {k[5:]: v for k, v in tensors.items() if k.startswith("best/")}
        return TrainState(**json.loads(meta["state"])), best

    def _check_options(self, saved: dict) -> None:
        for name, value in _REMOVED.items():
            used = saved.pop(name, value)
            if used != value:
                raise ValueError(f"{self.path}: checkpoint was made with option {name}={used!r}, which is gone")
        full = _comparable(dataclasses.asdict(TrainConfig())) | _ABSENT_MEANS | saved
        now = _comparable(dataclasses.asdict(self.cfg))
        differ = {k: v for k, v in full.items() if k not in _RUN_ONLY and now.get(k) != v}
        if differ:
            given = ", ".join(f"{k}={v!r} (now {now.get(k)!r})" for k, v in differ.items())
            raise ValueError(
                f"{self.path}: checkpoint was made with other training options: {given}; "
                "resume with the same options or start a fresh work directory"
            )
