"""The training loop: contrastive steps over whatever in a PromptedCLIP requires grad (the prompts by default).

Deterministic under a seed: each epoch's order and caption choice are pure functions of
(seed, epoch), so a run resumed from a checkpoint replays exactly what an uninterrupted run
would have done (bit for bit on one thread; see README, Reproducibility).
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ContextManager, Mapping, Sequence

import numpy as np
import torch
from tqdm import tqdm

from ..data.errors import BadInputReport
from ..data.records import Record, text_key
from ..evaluation import selection_key, selection_score
from ..metrics import LABEL_K, LABEL_KEYS
from ..model import PromptedCLIP
from ..runtime import CPU, Runtime
from .checkpoint import Checkpointer, TrainState
from .config import DEFAULT_EPOCHS, HEADLINE, LAST_EPOCH, MIN_STEPS, TrainConfig
from .distributed import average_gradients, from_main, share, usable
from .images import ImageBank, backward_mask
from .keys import CaptionKeys
from .loss import ContrastiveLoss, Keys
from .validation import Validator

# Training pairs the temperature is calibrated on (TrainConfig.calibrate_temperature).
CALIBRATION_PAIRS = 512
# How an epoch orders its images, from the epoch's random generator (the lab groups look-alikes).
EpochOrder = Callable[[np.random.Generator, int], np.ndarray]
# Entered around each part of a run, by name: "forward" (a micro-batch's forward and loss), "validation"
# (an epoch's validation), "calibration" (the temperature's, before training); e.g. to time them.
Phase = Callable[[str], ContextManager[None]]
# Fewer validation images than this choose no epoch (one image moves R@1 by 5 points or more): the last is kept.
MIN_CHOOSING = 20
# Hard negatives a step adds at most, as a share of its batch.
NEGATIVES_PER_PAIR = 0.5


def _quiet(message: str) -> None:
    """The log of ranks other than 0."""


def random_order(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.permutation(n)


def epoch_plan(records: Sequence[Record], seed: int, epoch: int, order: EpochOrder = random_order) -> tuple[np.ndarray, list[str]]:
    """This epoch's image order and one caption per image: a pure function of (seed, epoch)."""
    rng = np.random.default_rng([seed, epoch])
    permutation = order(rng, len(records))
    picks = rng.integers(0, 1 << 30, size=len(records))
    captions = [records[i].captions[picks[j] % len(records[i].captions)] for j, i in enumerate(permutation)]
    return permutation, captions


def _seed(*words: int) -> int:
    """A seed for torch drawn from these numbers (numpy's SeedSequence mixes them well)."""
    return int(np.random.SeedSequence(list(words)).generate_state(1)[0])


def warmup_cosine(total_steps: int, warmup_fraction: float) -> Callable[[int], float]:
    warmup = max(1, int(total_steps * warmup_fraction)) if warmup_fraction > 0 else 0

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


class NonFiniteError(ValueError):
    """Training produced NaN or infinity; nothing after the last good checkpoint was saved."""


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


class Trainer:
    """Trains `model` on `train_records`, keeps the epoch validation scores best, checkpoints in `work_dir`."""

    def __init__(
        self,
        model: PromptedCLIP,
        train_records: Sequence[Record],
        val_records: Sequence[Record],
        cfg: TrainConfig,
        runtime: Runtime = CPU,
        *,
        work_dir: str | Path | None = None,
        progress: bool = True,
        log: Callable[[str], None] = print,
        order: EpochOrder = random_order,
        skip_bad: bool = False,
        report: BadInputReport | None = None,
        on_epoch: Callable[[dict], None] | None = None,
        phase: Phase = lambda name: contextlib.nullcontext(),
        negatives: Mapping[str, Sequence[Record]] | None = None,
    ):
        """`negatives`: by `metrics.text_key` of a caption, images marked irrelevant to it (marks.apply_marks);
        a step whose batch holds that caption ranks them as negatives too (under torchrun, gathered like the pairs)."""
        if len(train_records) < 2:
            raise ValueError(f"training needs at least 2 images, got {len(train_records)}")
        if cfg.batch_size % runtime.world:
            raise ValueError(f"--batch-size {cfg.batch_size} does not split evenly over {runtime.world} processes")
        self.model = model.to(runtime.device)
        self.cfg, self.runtime, self.order = cfg, runtime, order
        # Only rank 0 reports: the others train the same parameters on their share of each batch.
        self.progress, self.log, self.on_epoch = progress and runtime.main, log if runtime.main else _quiet, on_epoch
        self.skip_bad, self.report, self.phase = skip_bad, report, phase
        own = cfg.calibrate_temperature
        self.loss = ContrastiveLoss(model.backbone.logit_scale, own, runtime.rank, runtime.world).to(runtime.device)
        self.named = {n: p for n, p in model.named_parameters() if p.requires_grad}
        if not self.named:
            raise ValueError("nothing to train: no parameter requires grad")
        self.named |= {f"loss.{n}": p for n, p in self.loss.named_parameters()}
        no_decay = model.no_weight_decay() | {f"loss.{n}" for n, _ in self.loss.named_parameters()}
        self.optimizer, self.optimizer_order = _make_optimizer(self.named, no_decay, cfg)
        known = list(train_records) + list(val_records)
        at = {r.key: i for i, r in enumerate(known)}
        held = {r.key for r in val_records}  # validation images never train, not even as negatives
        for record in (r for rs in (negatives or {}).values() for r in rs):
            if record.key not in at:
                at[record.key] = len(known)
                known.append(record)
        self.images = ImageBank(known, model, runtime, cfg.image_cache_mb << 20, cfg.batch_size)
        self.negatives = {q: sorted({at[r.key] for r in rs if r.key not in held}) for q, rs in (negatives or {}).items()}
        self.keys = CaptionKeys(self.images.records)
        self.train_idx = list(range(len(train_records)))
        self.val_idx = list(range(len(train_records), len(train_records) + len(val_records)))
        self.checkpoints = Checkpointer(work_dir, cfg)
        self.state = TrainState()
        self.best_state: dict[str, torch.Tensor] = {}
        self._set_schedule()

    def _set_schedule(self) -> None:
        """Steps per epoch follow the training images that decoded (all, unless some were skipped)."""
        n, b = len(self.train_idx), self.cfg.batch_size
        # A last, partial micro-batch counts when each rank gets part of it and the batch has negatives.
        self.micro_per_epoch = n // b + (1 if usable(self.runtime, n % b) >= max(2, self.runtime.world) else 0)
        self.steps_per_epoch = math.ceil(self.micro_per_epoch / self.cfg.grad_accum)
        self.epochs = self.cfg.epochs_for(self.steps_per_epoch)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, warmup_cosine(self.steps_per_epoch * self.epochs, self.cfg.warmup_fraction)
        )

    @property
    def train_records(self) -> list[Record]:
        return [self.images.records[i] for i in self.train_idx]

    def _prepare(self) -> None:
        """The first decode of every image: bad ones stop the run, or with skip_bad leave it."""
        bad = set(self.images.first_pass(skip_bad=self.skip_bad, report=self.report, progress="reading images" if self.progress else None))
        if bad:
            had_val = bool(self.val_idx)
            self.train_idx = [i for i in self.train_idx if i not in bad]
            self.val_idx = [i for i in self.val_idx if i not in bad]
            self.negatives = {q: [i for i in idx if i not in bad] for q, idx in self.negatives.items()}
            if len(self.train_idx) < 2:
                raise ValueError(f"training needs at least 2 readable images, got {len(self.train_idx)}")
            if had_val and not self.val_idx:
                raise ValueError("no validation image could be read, so no epoch can be chosen; fix or replace them")
            self._set_schedule()
        self.validator = Validator(self.images, self.train_idx, self.val_idx)

    def _pairs(
        self, order: np.ndarray, captions: list[str], start: int, stop: int, backprop: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Image and caption features of the plan's pairs start..stop; the images `backprop` marks (None: all)
        keep their graph through the tower."""
        ids = self.model.tokenize(captions[start:stop]).to(self.runtime.device)
        images = self.images.encode([self.train_idx[i] for i in order[start:stop]], backprop)
        return images, self.model.encode_text(ids)

    def _keys(self, order: np.ndarray, captions: list[str], start: int, stop: int) -> Keys | None:
        """The relevance keys of the plan's pairs start..stop (see CaptionKeys)."""
        return self.keys.batch([self.train_idx[i] for i in order[start:stop]], captions[start:stop])

    def _micro_batch(self, micro: int, n: int) -> tuple[int, int]:
        """Micro-batch `micro` of an epoch of n pairs; over several ranks, trimmed to split evenly."""
        start = micro * self.cfg.batch_size
        return start, start + usable(self.runtime, min(self.cfg.batch_size, n - start))

    def _micro_batch_loss(self, order: np.ndarray, captions: list[str], micro: int) -> torch.Tensor:
        whole = self._micro_batch(micro, len(order))
        start, stop = share(self.runtime, *whole)
        # Each micro-batch draws from its own seeds, so a resumed run draws what the whole run did, and the
        # images that backpropagate are drawn over the whole batch: what one process trains, several do.
        at = (self.cfg.seed, self.state.epoch, micro)
        backprop = backward_mask(whole[1] - whole[0], self.cfg.image_backward, torch.Generator().manual_seed(_seed(*at)))
        with self.phase("forward"), self.runtime.autocast():
            image_features, text_features = self._pairs(order, captions, start, stop, backprop[start - whole[0] : stop - whole[0]])
            negatives = None
            if self.negatives:  # on every rank alike (the marks are the same): each gathers the others' share
                mine = self._negatives(order, captions, *whole)[self.runtime.rank :: self.runtime.world]
                negatives = self.images.encode(mine, torch.zeros(len(mine), dtype=torch.bool)) if mine else image_features.new_zeros((0, image_features.shape[1]))
            return self.loss(image_features, text_features, self._keys(order, captions, start, stop), negatives)

    def _negatives(self, order: np.ndarray, captions: list[str], start: int, stop: int) -> list[int]:
        """The images marked irrelevant to the whole micro-batch's captions (those not in it); they train the text
        side (no graph through the image tower: they cost one forward each, spread over the ranks)."""
        batch = {self.train_idx[i] for i in order[start:stop]}
        found = dict.fromkeys(i for c in captions[start:stop] for i in self.negatives.get(text_key(c), ()) if i not in batch)
        return list(found)[: max(1, int(NEGATIVES_PER_PAIR * (stop - start)))]

    def _calibrate_temperature(self) -> None:
        """Start the loss's temperature where it best fits the untrained model on epoch 0's first pairs."""
        order, captions = epoch_plan(self.train_records, self.cfg.seed, 0, self.order)
        n, b = min(CALIBRATION_PAIRS, len(order)), self.cfg.batch_size
        if self.runtime.main:
            self.model.eval()
            images, texts = [], []
            with torch.no_grad(), self.phase("calibration"):
                for start in range(0, n, b):
                    with self.runtime.autocast():
                        image_features, text_features = self._pairs(order, captions, start, min(n, start + b))
                    images.append(image_features.float().cpu())
                    texts.append(text_features.float().cpu())
            before, after = self.loss.calibrate(torch.cat(images), torch.cat(texts), b, self._keys(order, captions, 0, n))
            self.log(f"loss temperature calibrated on {n} training pairs: logit scale {before:.1f} -> {after:.1f}")
        with torch.no_grad():
            self.loss.scale.fill_(from_main(self.runtime, float(self.loss.scale)))

    def _record_validation(self, epoch: int, train_loss: float | None) -> None:
        with self.phase("validation"):
            metrics = from_main(self.runtime, self.validator() if self.runtime.main else None)
        decides = metrics is not None and len(self.val_idx) >= MIN_CHOOSING
        # Where validation cannot decide, the latest epoch wins: a score that only grows.
        score = selection_score(metrics) if decides else float(epoch)
        entry = {"epoch": epoch, "train_loss": train_loss, "val_score": score}
        if metrics is not None:
            shown = ("clip_benchmark/t2i_R@1", "clip_benchmark/i2t_R@1", *(k for k in LABEL_KEYS if k in metrics))
            entry.update({k: metrics[k] for k in shown} | {"selected_by": selection_key(metrics) if decides else LAST_EPOCH})
        self.state.history.append(entry)
        if score > self.state.best_score:
            self.state.best_score, self.state.best_epoch = score, epoch
            self.best_state = {n: p.detach().cpu().clone() for n, p in self.named.items()}
        if metrics is not None:
            best = "  (best)" if self.state.best_epoch == epoch else ""
            label = f"  mAP {entry['label/t2i_mAP']:.1f}  P@{LABEL_K} {entry[f'label/t2i_P@{LABEL_K}']:.1f}" if "label/t2i_mAP" in entry else ""
            chosen = "" if epoch else {
                HEADLINE: "",
                LAST_EPOCH: f"  (validation's {len(self.val_idx)} images are too few to choose an epoch by: the run keeps its last)",
            }.get(entry["selected_by"], "  (epochs chosen by mAP: most captions are shared)")
            self.log(f"epoch {epoch}: val T2I R@1 {entry[HEADLINE]:.1f}  I2T R@1 {entry['clip_benchmark/i2t_R@1']:.1f}{label}{best}{chosen}")
        if self.on_epoch is not None and self.runtime.main:
            self.on_epoch(entry)

    def _require_finite(self, what: str, finite: bool) -> None:
        """Stop before a non-finite number reaches a checkpoint: the last one written stays good."""
        if not finite:
            kept = f"; the last good checkpoint is kept in {self.checkpoints.path.parent}" if self.checkpoints.path else ""
            raise NonFiniteError(
                f"{what} became non-finite at epoch {self.state.epoch + 1}, step {self.state.step}{kept}. "
                "Lower --lr (or use --no-bf16) and resume or start again."
            )

    def _save(self) -> None:
        self._require_finite("a trained parameter", all(bool(torch.isfinite(p).all()) for p in self.named.values()))
        if self.runtime.main:
            self.checkpoints.save(self.named, self.best_state, self.optimizer, self.optimizer_order, self.scheduler, self.state)

    def run(self, *, resume: bool = False, stop_after_steps: int | None = None) -> TrainResult:
        """Train to the end (or, for tests and time limits, stop after `stop_after_steps` optimizer steps)."""
        torch.manual_seed(self.cfg.seed)
        self._prepare()
        loaded = self.checkpoints.load(self.named, self.optimizer, self.optimizer_order, self.scheduler, self.runtime.device) if resume else None
        if resume:
            self.log(f"resumed at epoch {loaded[0].epoch + 1}, step {loaded[0].step}" if loaded else "no checkpoint to resume from; starting fresh")
        if self.epochs > DEFAULT_EPOCHS and self.cfg.epochs is None:
            self.log(f"{self.epochs} epochs: a small database ({self.steps_per_epoch} step(s) an epoch) trains for {MIN_STEPS} steps at least (--epochs sets them)")
        if loaded:
            self.state, self.best_state = loaded
        else:
            if self.cfg.calibrate_temperature:
                self._calibrate_temperature()
            self._record_validation(0, None)
        started, pairs = time.perf_counter(), 0
        bar = tqdm(total=self.steps_per_epoch * self.epochs, initial=self.state.step, unit="step", disable=not self.progress)
        while self.state.epoch < self.epochs:
            self.model.train()
            order, captions = epoch_plan(self.train_records, self.cfg.seed, self.state.epoch, self.order)
            losses = self.state.epoch_losses
            while self.state.micro < self.micro_per_epoch:
                loss = self._micro_batch_loss(order, captions, self.state.micro)
                self._require_finite("the training loss", bool(torch.isfinite(loss)))
                (loss / self.cfg.grad_accum).backward()
                losses.append(float(loss.detach()))
                start, stop = self._micro_batch(self.state.micro, len(order))
                pairs += stop - start
                self.state.micro += 1
                if self.state.micro % self.cfg.grad_accum and self.state.micro < self.micro_per_epoch:
                    continue
                average_gradients(self.runtime, self.named.values())
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.state.step += 1
                bar.update(1)
                bar.set_postfix(epoch=self.state.epoch + 1, loss=f"{losses[-1]:.3f}")
                if self.cfg.checkpoint_every and self.state.step % self.cfg.checkpoint_every == 0:
                    self._save()
                if stop_after_steps is not None and self.state.step >= stop_after_steps:
                    self._save()
                    bar.close()
                    return self._result(started, pairs, finished=False)
            self.state.epoch += 1
            self.state.micro, self.state.epoch_losses = 0, []
            self._record_validation(self.state.epoch, float(np.mean(losses)) if losses else None)
            self._save()
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


def _make_optimizer(
    named: dict[str, torch.nn.Parameter], no_decay: set[str], cfg: TrainConfig
) -> tuple[torch.optim.Optimizer, list[str]]:
    """AdamW with decay on matrices only (not on gains, biases, gates or the temperature), as CLIP trains.

    Returns the parameter names in the optimizer's own index order, for checkpoints. The fused
    kernel avoids a slow per-tensor step when large tensors are trainable.
    """
    decay = [n for n, p in named.items() if p.ndim >= 2 and n not in no_decay]
    flat = [n for n in named if n not in decay]
    groups = [
        {"params": [named[n] for n in decay], "weight_decay": cfg.weight_decay},
        {"params": [named[n] for n in flat], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr, fused=True)
    return optimizer, decay + flat
