"""The proxy backbone: a small open_clip CLIP pre-trained on the synthetic world's source domain.

No pre-trained CLIP can be downloaded here, so dbprompt ships its own: the same open_clip
code path as any real model (config in assets/models/dbprompt-proxy.json, weights as fp16
safetensors beside it), pre-trained by `dbprompt proxy pretrain`, loaded by name.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import save as st_save

from dbprompt.atomic import atomic_write_bytes, atomic_write_text
from dbprompt.backbones import RANDOM, load_backbone
from dbprompt.backbones.factory import MODEL_CONFIG_DIR
from dbprompt.data import assign_splits, load_database, records_for
from dbprompt.evaluation import evaluate_models
from dbprompt.model import PromptedCLIP
from dbprompt.prompts import PromptConfig
from dbprompt.runtime import Runtime
from dbprompt.training.config import TrainConfig
from dbprompt.training.trainer import Trainer, random_order

from .batches import find_look_alikes, grouped_order
from .world import write_database

NAME = "dbprompt-proxy"
# What dbprompt ships (read only: `pretrain` writes into its work directory; shipping new weights is
# copying them and their record here, in a commit of their own).
WEIGHTS = MODEL_CONFIG_DIR / f"{NAME}.safetensors"
RECORD = MODEL_CONFIG_DIR / f"{NAME}.record.json"
# The source database it is pre-trained on, and a held-out source test set drawn with another seed.
SOURCE_SEED = 0
TEST_SEED = 1000
TEST_IMAGES = 1000
VAL_FRACTION = 0.03
# The recipe of the shipped weights (BENCHMARKS.md, Proxy backbone): what `dbprompt proxy pretrain` does by default.
IMAGES = 28000
# Pre-training learns the backbone's own temperature with its weights, as CLIP does (the
# shipped weights were made so); the calibrated one is for adapting an already trained model.
RECIPE = TrainConfig(
    epochs=16, batch_size=64, lr=1e-3, weight_decay=0.1, warmup_fraction=0.05, calibrate_temperature=False
)


def source_test_records(work_dir: Path) -> list:
    db = work_dir / "source-test"
    if not (db / "metadata.jsonl").exists():
        write_database(db, TEST_IMAGES, domain="source", seed=TEST_SEED, image_size=64)
    return load_database(db).records


def pretrain(
    work_dir: str | Path,
    *,
    images: int = IMAGES,
    cfg: TrainConfig = RECIPE,
    hard_negatives: int = 0,
    runtime: Runtime | None = None,
    resume: bool = False,
    out: Path | None = None,
    progress: bool = True,
) -> dict:
    """Pre-train the proxy from random weights on the source domain; write fp16 weights + a record
    (to `out`, default WORK_DIR/dbprompt-proxy.safetensors, and the record beside it).

    `hard_negatives` K > 1 makes batches of runs of K look-alike images (batches.py).
    """
    work = Path(work_dir)
    out = out or work / f"{NAME}.safetensors"
    db = work / "source"
    if not (db / "metadata.jsonl").exists():
        print(f"writing {images} source-domain images to {db}")
        write_database(db, images, domain="source", seed=SOURCE_SEED, image_size=64)
    records = assign_splits(load_database(db).records, val_fraction=VAL_FRACTION, test_fraction=0.0, seed=SOURCE_SEED)
    splits = {s: records_for(records, s) for s in ("train", "val")} | {"test": source_test_records(work)}
    runtime = runtime or Runtime.resolve()
    backbone = load_backbone(NAME, RANDOM, device=runtime.device, seed=cfg.seed)
    backbone.requires_grad_(True)
    model = PromptedCLIP(backbone, PromptConfig.none())
    print(
        f"pre-training {NAME} ({sum(p.numel() for p in backbone.parameters()):,} parameters) on "
        f"{len(splits['train'])} source images, {runtime.describe()}"
    )
    order = random_order
    if hard_negatives > 1:
        # Enough candidates that a run still fills when its closest look-alikes are taken.
        look_alikes = find_look_alikes(splits["train"], 4 * hard_negatives)

        def order(rng, n):
            return grouped_order(look_alikes, hard_negatives, rng)

    trainer = Trainer(model, splits["train"], splits["val"], cfg, runtime, work_dir=work, progress=progress, order=order)
    result = trainer.run(resume=resume)
    trainer.restore_best()
    state = {k: v.detach().to(torch.float16).cpu().contiguous() for k, v in backbone.model.state_dict().items()}
    atomic_write_bytes(out, st_save(state, metadata={"format": "open_clip", "model": NAME}))
    # Record the quality of what ships (fp16-rounded), not of the fp32 weights in memory.
    metrics = _source_metrics(load_backbone(NAME, str(out), device=runtime.device), splits["test"], runtime)
    record = {
        "model": NAME,
        "source_test_images": len(splits["test"]),
        "source_test_seed": TEST_SEED,
        "source_test_metrics": metrics,
        "best_epoch": result.best_epoch,
        "train_images": len(splits["train"]),
        "train_config": asdict(cfg),
        "train_seconds": result.seconds,
        "pairs_per_second": result.pairs_per_second,
        "history": result.history,
        "command": f"dbprompt-lab proxy pretrain --images {images} --epochs {cfg.epochs} --batch-size {cfg.batch_size} --lr {cfg.lr}"
        + (f" --hard-negatives {hard_negatives}" if hard_negatives > 1 else ""),
    }
    atomic_write_text(out.with_name(f"{NAME}.record.json"), json.dumps(record, indent=2))
    return record


def _source_metrics(backbone, test: list, runtime: Runtime) -> dict[str, float]:
    return evaluate_models({"zero-shot": PromptedCLIP(backbone, PromptConfig.none())}, test, runtime)["zero-shot"]


def check(work_dir: str | Path, *, runtime: Runtime | None = None) -> tuple[float, float]:
    """Re-measure the shipped proxy's source test T2I R@1: (recorded, now)."""
    record = json.loads(RECORD.read_text())
    runtime = runtime or Runtime.resolve()
    now = _source_metrics(load_backbone(NAME, device=runtime.device), source_test_records(Path(work_dir)), runtime)
    return record["source_test_metrics"]["clip_benchmark/t2i_R@1"], now["clip_benchmark/t2i_R@1"]
