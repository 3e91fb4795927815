"""Contrastive training of whatever in a PromptedCLIP requires grad (prompts by default).

Deterministic under a seed: each epoch's order and caption choice are pure functions
of (seed, epoch), so a run resumed from a checkpoint replays exactly what an
uninterrupted run would have done. Checkpoints are safetensors + JSON, never pickle.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from .atomic import atomic_path
from .batches import LookAlikes, find_look_alikes, grouped_order
from .data.records import Record
from .embeddings import encode_image_files, image_zero_shot_files, load_image_batch
from .evaluate import evaluate, selection_score
from .model import PromptedCLIP
from .runtime import precision

CHECKPOINT = "checkpoint.safetensors"
# `dbprompt train`'s text anchor weights (TrainConfig.anchor): one training each, and validation
# keeps the best. Once validation ranked among the whole gallery (VALIDATION_GALLERY), it never
# kept the anchor of 32 in the comparison's 12 runs (BENCHMARKS.md), so by default one training.
DEFAULT_ANCHORS = (0.0,)
# Validation ranks its captions' images among this many, filling up with training images: the
# gallery search will use. In a 300-image gallery, prompts on shifted images scored 4 points
# over zero-shot where the same weights lost 5 on a 1,000-image test (BENCHMARKS.md).
VALIDATION_GALLERY = 1000
# Training pairs the temperature is calibrated on (TrainConfig.calibrate_temperature).
CALIBRATION_PAIRS = 512
# The trained temperature's name among the Trainer's parameters (checkpoints); not part of the
# model or of prompt files: ranking by cosine does not depend on it.
LOSS_SCALE = "loss.logit_scale"
# Checkpoints made before these TrainConfig options existed were trained with these values.
_ABSENT_MEANS = {"calibrate_temperature": False}


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10
    batch_size: int = 64
    # Chosen on validation with the calibrated temperature (BENCHMARKS.md); 1e-3 before it.
    lr: float = 2e-3
    weight_decay: float = 0.0
    warmup_fraction: float = 0.1
    grad_accum: int = 1
    seed: int = 0
    # Optimizer steps between checkpoints (0: only at epoch ends).
    checkpoint_every: int = 50
    # In-memory cache of decoded, transformed training images.
    image_cache_mb: int = 2048
    # Weight of a pull of each caption's features towards its zero-shot features, 1 - cosine
    # (KgCoOp, Yao et al. 2023). On shifted images, tuning the text side alone was seen to drag
    # all captions towards one direction, lowering the loss while retrieval fell; the pull stops that.
    anchor: float = 0.0
    # Compute the zero-shot features a gated visual prompt blends towards once per training
    # and validation image, not at every step and validation. Off only to measure what it saves.
    cache_zero_shot: bool = True
    # Batches made of runs of this many look-alike images (captions sharing most words), so
    # that each batch holds hard negatives; 0 or 1: random batches. See batches.py.
    hard_negative_group: int = 0
    # Train the loss's temperature, starting from the value that best fits the untrained
    # model's features on this database (calibrate_logit_scale), instead of the backbone's.
    # On shifted images the backbone's is far too sharp (the proxy's 45 against about 10),
    # and prompts were seen to lower the loss by collapsing the features instead.
    calibrate_temperature: bool = True

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 2 or self.grad_accum < 1:
            raise ValueError("epochs >= 1, batch_size >= 2 and grad_accum >= 1 are required")
        if self.lr <= 0 or not 0 <= self.warmup_fraction < 1:
            raise ValueError("lr must be > 0 and warmup_fraction in [0, 1)")
        if self.anchor < 0:
            raise ValueError(f"anchor must be >= 0, got {self.anchor}")
        if self.hard_negative_group < 0:
            raise ValueError(f"hard_negative_group must be >= 0, got {self.hard_negative_group}")


@dataclass
class TrainState:
    """Where a run is: enough, with the optimizer and parameters, to resume exactly."""

    epoch: int = 0
    micro: int = 0  # micro-batches done in the current epoch
    step: int = 0  # optimizer steps done in total
    best_score: float = -math.inf
    best_epoch: int = -1  # 0 = the state before training
    history: list[dict] = field(default_factory=list)


@dataclass
class TrainResult:
    best_state: dict[str, torch.Tensor]
    best_epoch: int
    best_score: float
    history: list[dict]
    steps: int
    seconds: float
    pairs_per_second: float
    finished: bool


def clip_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE over the batch's matching (image, caption) pairs."""
    logits = logit_scale.exp().clamp(max=100) * image_features.float() @ text_features.float().t()
    labels = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2


def calibrate_logit_scale(
    image_features: torch.Tensor, text_features: torch.Tensor, batch_size: int, grid: int = 64
) -> float:
    """The log logit scale in [0, ln 100] that minimises the mean in-batch clip_loss of these pairs."""
    candidates = torch.linspace(0.0, math.log(100.0), grid)
    losses = torch.zeros(grid)
    for start in range(0, len(image_features), batch_size):
        img, txt = image_features[start : start + batch_size].float(), text_features[start : start + batch_size].float()
        if len(img) < 2:
            break
        for i, c in enumerate(candidates):
            losses[i] += clip_loss(img, txt, c)
    return float(candidates[int(losses.argmin())])


def epoch_plan(
    records: Sequence[Record], seed: int, epoch: int, look_alikes: LookAlikes | None = None, group: int = 0
) -> tuple[np.ndarray, list[str]]:
    """This epoch's image order and one caption per image: a pure function of (seed, epoch).

    With `look_alikes` and a `group` above 1, the order is made of runs of look-alikes.
    """
    rng = np.random.default_rng([seed, epoch])
    grouped = look_alikes is not None and group > 1
    order = grouped_order(look_alikes, group, rng) if grouped else rng.permutation(len(records))
    picks = rng.integers(0, 1 << 30, size=len(records))
    captions = [records[i].captions[picks[j] % len(records[i].captions)] for j, i in enumerate(order)]
    return order, captions


def _warmup_cosine(total_steps: int, warmup_fraction: float) -> Callable[[int], float]:
    warmup = max(1, int(total_steps * warmup_fraction)) if warmup_fraction > 0 else 0

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def _make_optimizer(
    named: dict[str, torch.nn.Parameter], cfg: TrainConfig
) -> tuple[torch.optim.Optimizer, list[str]]:
    """AdamW with decay on matrices only (not on gains, biases or the temperature), as CLIP trains.

    Returns the parameter names in the optimizer's own index order, for checkpoints.
    The fused kernel avoids a slow per-tensor step when large tensors are trainable.
    """
    decay = [n for n, p in named.items() if p.ndim >= 2]
    flat = [n for n, p in named.items() if p.ndim < 2]
    groups = [
        {"params": [named[n] for n in decay], "weight_decay": cfg.weight_decay},
        {"params": [named[n] for n in flat], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr, fused=True)
    return optimizer, decay + flat


class _ImageCache:
    """Transformed training images kept in memory up to a byte budget: decoding dominates CPU epochs."""

    def __init__(self, transform: Callable, budget_bytes: int):
        self.transform = transform
        self.budget = budget_bytes
        self.used = 0
        self.items: dict[Path, torch.Tensor] = {}

    def batch(self, paths: Sequence[Path]) -> torch.Tensor:
        missing = [p for p in paths if p not in self.items]
        if missing:
            loaded = load_image_batch(missing, self.transform)
            for p, t in zip(missing, loaded):
                if self.used + t.numel() * t.element_size() <= self.budget:
                    self.items[p] = t
                    self.used += t.numel() * t.element_size()
            fresh = dict(zip(missing, loaded))
        else:
            fresh = {}
        return torch.stack([self.items[p] if p in self.items else fresh[p] for p in paths])


class Trainer:
    def __init__(
        self,
        model: PromptedCLIP,
        train_records: Sequence[Record],
        val_records: Sequence[Record],
        cfg: TrainConfig,
        *,
        device: str,
        bf16: bool,
        work_dir: str | Path | None = None,
        progress: bool = True,
        log: Callable[[str], None] = print,
    ):
        if len(train_records) < 2:
            raise ValueError(f"training needs at least 2 images, got {len(train_records)}")
        self.model = model.to(device)
        self.train_records = list(train_records)
        self.val_records = list(val_records)
        self.cfg = cfg
        self.device = device
        self.bf16 = bf16
        self.work_dir = Path(work_dir) if work_dir else None
        self.progress = progress
        self.log = log
        self.named = {n: p for n, p in model.named_parameters() if p.requires_grad}
        if not self.named:
            raise ValueError("nothing to train: no parameter requires grad")
        self.loss_scale = model.backbone.logit_scale
        if cfg.calibrate_temperature:
            self.loss_scale = torch.nn.Parameter(self.loss_scale.detach().float().clone())
            self.named[LOSS_SCALE] = self.loss_scale
        self.optimizer, self.optimizer_order = _make_optimizer(self.named, cfg)
        self.micro_per_epoch = len(self.train_records) // cfg.batch_size + (
            1 if len(self.train_records) % cfg.batch_size >= 2 else 0
        )
        self.steps_per_epoch = math.ceil(self.micro_per_epoch / cfg.grad_accum)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, _warmup_cosine(self.steps_per_epoch * cfg.epochs, cfg.warmup_fraction)
        )
        self.state = TrainState()
        self.best_state: dict[str, torch.Tensor] = {}
        self.images = _ImageCache(model.backbone.image_transform(), cfg.image_cache_mb << 20)
        # With a frozen image side, image features are computed once, not every step.
        self.train_image_features: torch.Tensor | None = None
        self.val_image_features: torch.Tensor | None = None
        # Zero-shot features of the training images, for a gated visual prompt's blend, and of
        # the validation gallery (validation images, then distractors).
        self.zero_shot_images: torch.Tensor | None = None
        self.val_zero_shot_images: torch.Tensor | None = None
        group = cfg.hard_negative_group
        # Enough candidates that a run still fills when its closest look-alikes are taken.
        self.look_alikes = find_look_alikes(self.train_records, 4 * group) if group > 1 else None

    # --- checkpoints ----------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path | None:
        return self.work_dir / CHECKPOINT if self.work_dir else None

    def save_checkpoint(self) -> None:
        if self.checkpoint_path is None:
            return
        tensors = {f"param/{n}": p.detach().cpu().contiguous() for n, p in self.named.items()}
        tensors.update({f"best/{n}": t.cpu().contiguous() for n, t in self.best_state.items()})
        opt = self.optimizer.state_dict()
        names = self.optimizer_order
        for idx, slots in opt["state"].items():
            for key, value in slots.items():
                tensors[f"opt/{names[idx]}/{key}"] = value.detach().cpu().contiguous().reshape(value.shape)
        meta = {
            "state": json.dumps(asdict(self.state)),
            "train_config": json.dumps(asdict(self.cfg)),
            "param_groups": json.dumps(opt["param_groups"]),
            "scheduler": json.dumps(self.scheduler.state_dict()),
        }
        with atomic_path(self.checkpoint_path) as tmp:
            save_file(tensors, str(tmp), metadata=meta)

    def load_checkpoint(self) -> bool:
        path = self.checkpoint_path
        if path is None or not path.exists():
            return False
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            meta = f.metadata()
        tensors = load_file(str(path))
        # Options added since the checkpoint was made count as their defaults, except those
        # whose absence meant off.
        saved_cfg = json.loads(json.dumps(asdict(TrainConfig()))) | _ABSENT_MEANS | json.loads(meta["train_config"])
        if saved_cfg != json.loads(json.dumps(asdict(self.cfg))):
            raise ValueError(
                f"{path}: checkpoint was made with other training options {saved_cfg}; "
                "resume with the same options or start a fresh work directory"
            )
        missing = [n for n in self.named if f"param/{n}" not in tensors]
        if missing:
            raise ValueError(f"{path}: checkpoint lacks parameters {missing[:3]} (another model or method?)")
        with torch.no_grad():
            for n, p in self.named.items():
                p.copy_(tensors[f"param/{n}"])
        self.best_state = {k[5:]: v for k, v in tensors.items() if k.startswith("best/")}
        names = self.optimizer_order
        state: dict[int, dict] = {}
        for key, value in tensors.items():
            if key.startswith("opt/"):
                name, slot = key[4:].rsplit("/", 1)
                state.setdefault(names.index(name), {})[slot] = value.to(self.device)
        self.optimizer.load_state_dict({"state": state, "param_groups": json.loads(meta["param_groups"])})
        self.scheduler.load_state_dict(json.loads(meta["scheduler"]))
        self.state = TrainState(**json.loads(meta["state"]))
        return True

    # --- steps ----------------------------------------------------------------------
    def _image_side_frozen(self) -> bool:
        return self.model.visual_prompt is None and not any(
            p.requires_grad for p in self.model.backbone.image_parameters()
        )

    def _distractor_indices(self) -> list[int]:
        """Training images spread evenly over the list (not its first folder), to fill the validation gallery."""
        n, extra = len(self.train_records), max(0, VALIDATION_GALLERY - len(self.val_records))
        return list(range(n)) if extra >= n else [i * n // extra for i in range(extra)]

    def _validate(self) -> dict[str, float] | None:
        if not self.val_records:
            return None
        self.model.eval()  # before any encoding here: prompt dropout is for training steps only
        picks = self._distractor_indices()
        distractors = [self.train_records[i].path for i in picks]
        own = [r.path for r in self.val_records]
        if self._image_side_frozen():
            if self.val_image_features is None:
                own_features = encode_image_files(self.model, own, device=self.device, bf16=self.bf16)
                picked = self.train_image_features[torch.as_tensor(picks, dtype=torch.long)]
                self.val_image_features = torch.cat([own_features, picked])
            image_features = self.val_image_features
        elif self.cfg.cache_zero_shot and self.model.image_zero_shot_is_fixed():
            # A gated visual prompt blends towards zero-shot features that never change: computed
            # at the first validation only (the distractors' are the training cache's), they halve
            # the image work of every later one.
            if self.val_zero_shot_images is None:
                if self.zero_shot_images is None:
                    self._cache_zero_shot_images()
                own_zero_shot = image_zero_shot_files(self.model, own, device=self.device, bf16=self.bf16)
                picked = self.zero_shot_images[torch.as_tensor(picks, dtype=torch.long, device=self.zero_shot_images.device)]
                self.val_zero_shot_images = torch.cat([own_zero_shot, picked.cpu()])
            image_features = encode_image_files(
                self.model, own + distractors, device=self.device, bf16=self.bf16, zero_shot=self.val_zero_shot_images
            )
        else:
            image_features = None
        return evaluate(
            self.model,
            self.val_records,
            device=self.device,
            bf16=self.bf16,
            image_features=image_features,
            distractors=distractors,
        )

    def _record_validation(self, epoch: int, train_loss: float | None) -> None:
        metrics = self._validate()
        score = selection_score(metrics) if metrics is not None else float(epoch)
        entry = {"epoch": epoch, "train_loss": train_loss, "val_score": score}
        if metrics is not None:
            entry.update({k: metrics[k] for k in ("clip_benchmark/t2i_R@1", "clip_benchmark/i2t_R@1")})
        self.state.history.append(entry)
        if score > self.state.best_score:
            self.state.best_score, self.state.best_epoch = score, epoch
            self.best_state = {n: p.detach().cpu().clone() for n, p in self.named.items()}
        if metrics is not None:
            self.log(
                f"epoch {epoch}: val T2I R@1 {metrics['clip_benchmark/t2i_R@1']:.1f}  "
                f"I2T R@1 {metrics['clip_benchmark/i2t_R@1']:.1f}"
                + ("  (best)" if self.state.best_epoch == epoch else "")
            )

    def _pair_features(
        self, order: np.ndarray, captions: list[str], start: int, stop: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Image features, caption features and caption token ids of the plan's pairs start..stop."""
        idx = torch.as_tensor(order[start:stop])
        ids = self.model.tokenize(captions[start:stop]).to(self.device)
        if self.train_image_features is not None:
            image_features = self.train_image_features[idx].to(self.device)
        else:
            images = self.images.batch([self.train_records[i].path for i in idx]).to(self.device)
            zero_shot = None if self.zero_shot_images is None else self.zero_shot_images[idx]
            image_features = self.model.encode_image(images, zero_shot=zero_shot)
        return image_features, self.model.encode_text(ids), ids

    def _micro_batch_loss(self, order: np.ndarray, captions: list[str], micro: int) -> tuple[torch.Tensor, int]:
        b = self.cfg.batch_size
        with precision(self.device, self.bf16):
            image_features, text_features, ids = self._pair_features(order, captions, micro * b, (micro + 1) * b)
            loss = clip_loss(image_features, text_features, self.loss_scale)
            if self.cfg.anchor:
                plain = self.model.text_zero_shot(ids)
                loss = loss + self.cfg.anchor * (1 - (text_features.float() * plain.float()).sum(-1)).mean()
        return loss, len(ids)

    def _cache_zero_shot_images(self) -> None:
        """Zero-shot features of every training image, decoded through the training image cache."""
        self.zero_shot_images = image_zero_shot_files(
            self.model,
            [r.path for r in self.train_records],
            device=self.device,
            bf16=self.bf16,
            batch_size=self.cfg.batch_size,
            load=self.images.batch,
            progress="caching zero-shot features" if self.progress else None,
        ).to(self.device)

    def _calibrate_temperature(self) -> None:
        """Start the loss's temperature where it best fits the untrained model on epoch 0's first pairs."""
        order, captions = epoch_plan(
            self.train_records, self.cfg.seed, 0, self.look_alikes, self.cfg.hard_negative_group
        )
        n, b = min(CALIBRATION_PAIRS, len(order)), self.cfg.batch_size
        self.model.eval()
        images, texts = [], []
        with torch.no_grad():
            for start in range(0, n, b):
                with precision(self.device, self.bf16):
                    image_features, text_features, _ = self._pair_features(order, captions, start, min(n, start + b))
                images.append(image_features.float().cpu())
                texts.append(text_features.float().cpu())
            before = float(self.loss_scale.exp())
            self.loss_scale.fill_(calibrate_logit_scale(torch.cat(images), torch.cat(texts), b))
            after = float(self.loss_scale.exp())
        self.log(f"loss temperature calibrated on {n} training pairs: logit scale {before:.1f} -> {after:.1f}")

    def run(self, *, resume: bool = False, stop_after_steps: int | None = None) -> TrainResult:
        """Train to the end (or, for tests and time limits, stop after `stop_after_steps` optimizer steps)."""
        torch.manual_seed(self.cfg.seed)
        resumed = resume and self.load_checkpoint()
        if resume and not resumed:
            self.log("no checkpoint to resume from; starting fresh")
        if resumed:
            self.log(f"resumed at epoch {self.state.epoch + 1}, step {self.state.step}")
        if self._image_side_frozen() and self.train_image_features is None:
            self.train_image_features = encode_image_files(
                self.model,
                [r.path for r in self.train_records],
                device=self.device,
                bf16=self.bf16,
                progress="caching image features" if self.progress else None,
            )
        if self.cfg.cache_zero_shot and self.model.image_zero_shot_is_fixed() and self.zero_shot_images is None:
            self._cache_zero_shot_images()
        if not resumed:
            if self.cfg.calibrate_temperature:
                self._calibrate_temperature()
            self._record_validation(0, None)
        started, pairs = time.perf_counter(), 0
        total_steps = self.steps_per_epoch * self.cfg.epochs
        bar = tqdm(total=total_steps, initial=self.state.step, unit="step", disable=not self.progress)
        while self.state.epoch < self.cfg.epochs:
            self.model.train()
            order, captions = epoch_plan(
                self.train_records, self.cfg.seed, self.state.epoch, self.look_alikes, self.cfg.hard_negative_group
            )
            losses: list[float] = []
            while self.state.micro < self.micro_per_epoch:
                loss, n = self._micro_batch_loss(order, captions, self.state.micro)
                (loss / self.cfg.grad_accum).backward()
                losses.append(float(loss.detach()))
                pairs += n
                self.state.micro += 1
                if self.state.micro % self.cfg.grad_accum and self.state.micro < self.micro_per_epoch:
                    continue
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.state.step += 1
                rate = pairs / max(1e-9, time.perf_counter() - started)
                bar.update(1)
                bar.set_postfix(epoch=self.state.epoch + 1, loss=f"{losses[-1]:.3f}", pairs_s=f"{rate:.0f}")
                if self.cfg.checkpoint_every and self.state.step % self.cfg.checkpoint_every == 0:
                    self.save_checkpoint()
                if stop_after_steps is not None and self.state.step >= stop_after_steps:
                    self.save_checkpoint()
                    bar.close()
                    return self._result(started, pairs, finished=False)
            self.state.epoch += 1
            self.state.micro = 0
            self._record_validation(self.state.epoch, float(np.mean(losses)) if losses else None)
            self.save_checkpoint()
        bar.close()
        return self._result(started, pairs, finished=True)

    def restore_best(self) -> None:
        """Put the parameters validation preferred back into the model."""
        with torch.no_grad():
            for name, tensor in self.best_state.items():
                self.named[name].copy_(tensor)

    def _result(self, started: float, pairs: int, *, finished: bool) -> TrainResult:
        seconds = time.perf_counter() - started
        return TrainResult(
            best_state=dict(self.best_state),
            best_epoch=self.state.best_epoch,
            best_score=self.state.best_score,
            history=list(self.state.history),
            steps=self.state.step,
            seconds=seconds,
            pairs_per_second=pairs / seconds if seconds > 0 else 0.0,
            finished=finished,
        )


def train_candidates(
    build: Callable[[], PromptedCLIP],
    train_records: Sequence[Record],
    val_records: Sequence[Record],
    configs: Sequence[TrainConfig],
    *,
    device: str,
    bf16: bool,
    work_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> tuple[PromptedCLIP, TrainResult, TrainConfig]:
    """Train a fresh model per config and keep the one validation scores best (ties: the earlier).

    Each candidate checkpoints in its own work subdirectory, so a resumed run skips those done.
    """
    if not configs:
        raise ValueError("no training configuration to try")
    if not val_records and len(configs) > 1:
        log("no validation split to choose with: training only the first candidate")
        configs = configs[:1]
    best: tuple[PromptedCLIP, TrainResult, TrainConfig] | None = None
    for i, cfg in enumerate(configs):
        sub = Path(work_dir) / f"candidate-{i}" if work_dir and len(configs) > 1 else work_dir
        if len(configs) > 1:
            log(f"candidate {i + 1}/{len(configs)}: lr {cfg.lr:g}, anchor {cfg.anchor:g}")
        trainer = Trainer(build(), train_records, val_records, cfg, device=device, bf16=bf16, work_dir=sub, progress=progress, log=log)
        result = trainer.run(resume=resume)
        trainer.restore_best()
        if best is None or result.best_score > best[1].best_score:
            best = (trainer.model, result, cfg)
    return best
