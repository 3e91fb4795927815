"""The Python API: a user's day in four calls. Every CLI command is a thin wrapper over one of these.

    import dbprompt
    result = dbprompt.train("my_photos/", "photos.safetensors", model="ViT-B-32", pretrained="laion2b_s34b_b79k")
    report = dbprompt.evaluate("my_photos/", "photos.safetensors")
    dbprompt.build_index("my_photos/", "photos.safetensors", "photos.index")
    hits = dbprompt.open_index("photos.index").search("a dog on a beach", k=10)

Options are the fields of PromptConfig, TrainConfig, SplitConfig and ReadOptions, given by name
(`epochs=5`, `text_len=4`, `val_fraction=0.2`, `skip_bad=True`); their defaults are `dbprompt
train`'s, because the CLI's flags are built from the same fields.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from .backbones import BackboneAdapter, load_named_backbone
from .data import BadInputReport, Database, ReadOptions, SplitConfig, read_database, split_records
from .evaluation import evaluate_models
from .index import IndexInfo
from .index import build_index as build_index_from
from .locking import one_writer
from .model import PromptedCLIP
from .options import split_kwargs
from .prompts import PromptConfig
from .prompts.learner import caption_vocabulary
from .runtime import Runtime
from .searcher import Searcher, open_index
from .storage import read_prompt_file
from .training.candidates import train_candidates
from .training.config import TrainConfig

__all__ = ["EvalReport", "Searcher", "TrainReport", "build_index", "evaluate", "open_index", "train"]


@dataclass
class TrainReport:
    """What `train` wrote and how training went."""

    path: Path
    config: PromptConfig
    train_config: TrainConfig
    best_epoch: int
    best_score: float
    history: list[dict]
    train_images: int
    val_images: int
    trainable_parameters: int
    bad_input: BadInputReport = field(default_factory=BadInputReport)

    @property
    def kept_zero_shot(self) -> bool:
        """Gated prompts kept at epoch 0 rank exactly as zero-shot does."""
        return self.best_epoch == 0 and self.config.gate


@dataclass
class EvalReport:
    """Recall@K of zero-shot and (with a prompt file) the prompts, on one split."""

    split: str
    images: int
    captions: int
    backbone: str
    pretrained: str | None
    rows: dict[str, dict[str, float]]
    bad_input: BadInputReport = field(default_factory=BadInputReport)


def _read(db: str | os.PathLike | Database, read: ReadOptions) -> Database:
    return db if isinstance(db, Database) else read_database(db, read)


@one_writer("train")
def train(
    db: str | os.PathLike | Database,
    out: str | os.PathLike,
    *,
    model: str | None = None,
    pretrained: str | None = None,
    backbone: BackboneAdapter | None = None,
    anchors: Sequence[float] | None = None,
    runtime: Runtime | None = None,
    work_dir: str | os.PathLike | None = None,
    resume: bool = False,
    force: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
    **options: Any,
) -> TrainReport:
    """Train prompts for one database on a frozen backbone and write them to `out` (a .safetensors file).

    `model`/`pretrained` name the backbone (or pass a loaded `backbone`). `anchors`: several text
    anchor weights, one training each, validation keeping the best. Checkpoints go to
    `work_dir` (default: OUT.work); `resume` continues from them. An existing `out` is replaced only
    with `force` (or `resume`), and a second run into the same `out` is refused while one runs
    (both by `one_writer`).
    """
    prompt_kw, train_kw, split_kw, read_kw = split_kwargs(options, PromptConfig, TrainConfig, SplitConfig, ReadOptions)
    config, splits_cfg, read = PromptConfig(**prompt_kw), SplitConfig(**split_kw), ReadOptions(**read_kw)
    base = TrainConfig(**train_kw)
    if not config.kinds:
        raise ValueError("nothing to train: --text-len, --visual-len and --vocab are all 0")
    runtime = runtime or Runtime.resolve()
    database = _read(db, read)
    splits = split_records(database.records, splits_cfg)
    if backbone is None:
        if model is None:
            raise ValueError("say which backbone: model=NAME (and pretrained=...), or backbone=")
        backbone = load_named_backbone(model, pretrained, device=runtime.device)
    vocabulary = caption_vocabulary(backbone, config, [c for r in splits["train"] for c in r.captions])

    def fresh() -> PromptedCLIP:
        torch.manual_seed(base.seed)
        return PromptedCLIP(backbone, config, vocabulary)

    out = Path(out)
    log(
        f"training {'+'.join(config.kinds)} prompts ({fresh().trainable_parameter_count():,} parameters) on "
        f"{backbone.name} [{backbone.pretrained}]: {len(splits['train'])} train / {len(splits['val'])} val images, "
        f"{runtime.describe()}"
    )
    configs = [base.replace(anchor=a) for a in dict.fromkeys(anchors if anchors is not None else [base.anchor])]
    trained, result, cfg = train_candidates(
        fresh, splits["train"], splits["val"], configs, work_dir=work_dir or out.with_name(out.name + ".work"),
        resume=resume, log=log, runtime=runtime, progress=progress, skip_bad=read.skip_bad, report=database.report,
    )
    extra = {
        "best_epoch": result.best_epoch,
        "best_val_score": result.best_score,
        "history": result.history,
        "train_config": dataclasses.asdict(cfg),
        "splits": dataclasses.asdict(splits_cfg),
        "database": str(database.source),
        "train_images": len(splits["train"]),
        "pairs_per_second": result.pairs_per_second,
    }
    trained.save_prompt_file(out, extra)
    return TrainReport(
        out, config, cfg, result.best_epoch, result.best_score, result.history, len(splits["train"]),
        len(splits["val"]), trained.trainable_parameter_count(), database.report,
    )


def evaluate(
    db: str | os.PathLike | Database,
    prompts: str | os.PathLike | None = None,
    *,
    model: str | None = None,
    pretrained: str | None = None,
    split: str = "test",
    runtime: Runtime | None = None,
    batch_size: int = 64,
    progress: bool = False,
    **options: Any,
) -> EvalReport:
    """Zero-shot and (given a prompt file) prompted Recall@K on a split, every image decoded once.

    Without split options the split recorded in the prompt file is reused, so the test images
    are those training never saw.
    """
    split_kw, read_kw = split_kwargs(options, SplitConfig, ReadOptions)
    read = ReadOptions(**read_kw)
    runtime = runtime or Runtime.resolve()
    models: dict[str, PromptedCLIP] = {}
    recorded: dict = {}
    if prompts is not None:
        pf = read_prompt_file(prompts)
        recorded = _recorded_splits(pf.extra.get("splits"))
        # A named backbone, or the one the file records from local weights only; its fingerprint is checked.
        named = load_named_backbone(model, pretrained, device=runtime.device) if model else None
        prompted = PromptedCLIP.from_prompt_file(prompts, named, device=runtime.device)
        backbone = prompted.backbone
        label = "prompts (" + "+".join(pf.config.kinds) + ")"
    elif model:
        backbone = load_named_backbone(model, pretrained, device=runtime.device)
    else:
        raise ValueError("give a prompt file, or a model for a zero-shot evaluation")
    models["zero-shot"] = PromptedCLIP(backbone, PromptConfig.none()).to(runtime.device)
    if prompts is not None:
        models[label] = prompted
    database = _read(db, read)
    splits = split_records(database.records, SplitConfig(**(recorded | split_kw)))
    records = splits[split]
    rows = evaluate_models(
        models, records, runtime, batch_size=batch_size, skip_bad=read.skip_bad, report=database.report,
        progress=f"evaluating {split}" if progress else None,
    )
    return EvalReport(
        split, len(records), sum(len(r.captions) for r in records), backbone.name, backbone.pretrained, rows,
        database.report,
    )


def _recorded_splits(value: Any) -> dict[str, float]:
    """The split options a prompt file records, those that are numbers (the file may come from anyone)."""
    value = dict(value) if isinstance(value, dict) else {}
    if "seed" in value:  # the name before 0.2
        value["split_seed"] = value.pop("seed")
    names = {f.name for f in dataclasses.fields(SplitConfig)}
    return {k: v for k, v in value.items() if k in names and isinstance(v, (int, float)) and not isinstance(v, bool)}


def build_index(
    db: str | os.PathLike | Database,
    prompts: str | os.PathLike,
    out: str | os.PathLike,
    *,
    kind: str = "auto",
    batch_size: int = 64,
    runtime: Runtime | None = None,
    progress: bool = True,
    backbone: BackboneAdapter | None = None,
    model: str | None = None,
    pretrained: str | None = None,
    force: bool = False,
    **options: Any,
) -> IndexInfo:
    """Embed every image of `db` through the prompt file into the index directory `out` (created or updated).

    The backbone: `backbone`, else `model`/`pretrained`, else the one the prompt file records (local
    weights only). An index of another database, prompt file or backbone is replaced only with `force`.
    """
    (read_kw,) = split_kwargs(options, ReadOptions)
    read = ReadOptions(**read_kw)
    runtime = runtime or Runtime.resolve()
    if backbone is None and model is not None:
        backbone = load_named_backbone(model, pretrained, device=runtime.device)
    return build_index_from(
        _read(db, read), prompts, out, kind=kind, batch_size=batch_size, runtime=runtime,
        skip_bad=read.skip_bad, backbone=backbone, progress=progress, force=force,
    )

