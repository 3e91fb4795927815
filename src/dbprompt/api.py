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

import contextlib
import dataclasses
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from .backbones import BackboneAdapter, load_named_backbone
from .data import BadInputReport, Database, DataError, ReadOptions, SplitConfig, read_database, split_records
from .data.database import require_captions
from .data.recorded import record_read_options, reuse_read_options
from .data.splits import TOO_FEW_IMAGES, Splits
from .evaluation import EvalReport, encode_split, score
from .index import IndexInfo
from .index import build_index as build_index_from
from .index.distributed import RayOptions, check_ray
from .locking import one_writer
from .marks import with_marks
from .metrics import CURVE_KS, TABLE_KS, saturated_keys
from .model import PromptedCLIP
from .options import split_kwargs
from .prompts import PromptConfig
from .prompts.learner import caption_vocabulary
from .report.training_log import TrainingLog
from .runtime import Runtime
from .searcher import Searcher, open_index
from .storage import read_prompt_file
from .training.checkpoint import CHECKPOINT
from .training.config import TrainConfig
from .training.trainer import Trainer
from .training.distributed import barrier, join

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
    splits: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def _best(self) -> dict:
        return next((h for h in self.history if h["epoch"] == self.best_epoch), {})

    @property
    def selected_by(self) -> str:
        """The validation metric that chose the epoch: T2I R@1, or mAP where captions are labels."""
        return self._best.get("selected_by") or "clip_benchmark/t2i_R@1"

    @property
    def best_metric(self) -> float:
        """That metric at the kept epoch, in %: what to show (`best_score` adds a tie-break that can pass 100)."""
        return float(self._best.get(self.selected_by, self.best_score))

    @property
    def kept_zero_shot(self) -> bool:
        """Prompts kept at epoch 0 rank exactly as zero-shot does: every part starts at the backbone's output."""
        return self.best_epoch == 0

    def to_json(self) -> dict[str, Any]:
        """What `dbprompt train --json` prints."""
        return {
            "path": str(self.path), "bytes": self.path.stat().st_size, "best_epoch": self.best_epoch,
            "best_val_score": self.best_score, "kept_zero_shot": self.kept_zero_shot,
            "train_config": dataclasses.asdict(self.train_config), "prompt_config": dataclasses.asdict(self.config),
            "trainable_parameters": self.trainable_parameters, "train_images": self.train_images,
            "val_images": self.val_images, "splits": self.splits, "history": self.history,
            "skipped": self.bad_input.counts, "warnings": self.warnings,
        }


def _bars(progress: bool | None) -> bool:
    """Progress bars for a person at a terminal (None: where stderr is one); in a log file they are noise."""
    return sys.stderr.isatty() if progress is None else progress


def _read(db: str | os.PathLike | Database, read: ReadOptions) -> Database:
    if not isinstance(db, (str, os.PathLike, Database)):
        raise TypeError(f"db must be a database's path (str or os.PathLike) or a dbprompt Database, got {type(db).__name__}")
    return db if isinstance(db, Database) else read_database(db, read)


@one_writer("train")
def train(
    db: str | os.PathLike | Database,
    out: str | os.PathLike,
    *,
    model: str | None = None,
    pretrained: str | None = None,
    backbone: BackboneAdapter | None = None,
    runtime: Runtime | None = None,
    work_dir: str | os.PathLike | None = None,
    resume: bool = False,
    force: bool = False,
    progress: bool | None = None,
    log: Callable[[str], None] = print,
    log_dir: str | os.PathLike | None = None,
    feedback: str | os.PathLike | None = None,
    keep_work: bool = False,
    **options: Any,
) -> TrainReport:
    """Train prompts for one database on a frozen backbone and write them to `out` (a .safetensors file).

    `feedback`: an index directory whose search page kept marks (`serve --feedback`): each query marked
    relevant to an image is one of its captions, each marked irrelevant a hard negative for the query; the
    database then needs no captions of its own.

    `model`/`pretrained` name the backbone (or pass a loaded `backbone`). Checkpoints go to
    `work_dir` (default: OUT.work); `resume` continues from them; a finished run removes its
    checkpoint (and the default work directory) unless `keep_work`. `log_dir` gets each epoch's
    scores as CSV and TensorBoard scalars. Without a validation split in the database file,
    validation is carved out of the training images (see `split_records`). An existing `out` is
    replaced only with `force` (or `resume`), and a second run into the same `out` is refused while
    one runs (both by `one_writer`).
    """
    prompt_kw, train_kw, split_kw, read_kw = split_kwargs(options, PromptConfig, TrainConfig, SplitConfig, ReadOptions)
    config, splits_cfg, read = PromptConfig(**prompt_kw), SplitConfig(**split_kw), ReadOptions(**read_kw)
    cfg = TrainConfig(**train_kw)
    if not config.kinds:
        raise ValueError("nothing to train: --text-len, --visual-len, --vocab and --visual-adapter are all 0")
    runtime = join(runtime or Runtime.resolve())  # torchrun: one process per GPU (or CPU share)
    log = log if runtime.main else (lambda message: None)
    database, marked = with_marks(_read(db, read), feedback, log)
    splits = split_records(database.records, splits_cfg)
    _check_validation(splits, database)
    warnings = splits.warnings("val", "test")
    if backbone is None:
        if model is None:
            raise ValueError("say which backbone: model=NAME (and pretrained=...), or backbone=")
        backbone = load_named_backbone(model, pretrained, device=runtime.device)
    vocabulary = caption_vocabulary(backbone, config, [c for r in splits["train"] for c in r.captions])

    torch.manual_seed(cfg.seed)
    fresh = PromptedCLIP(backbone, config, vocabulary=vocabulary)
    out = Path(out)
    log(
        f"training {'+'.join(config.kinds)} prompts ({fresh.trainable_parameter_count():,} parameters) on "
        f"{backbone.name} [{backbone.pretrained}]: {len(splits['train'])} train / {len(splits['val'])} val / "
        f"{len(splits['test'])} test images (splits made {splits.how()}), {runtime.describe()}"
    )
    for warning in warnings:
        log(f"warning: {warning}")
    with contextlib.ExitStack() as stack:
        logging = log_dir and runtime.main
        on_epoch = stack.enter_context(TrainingLog(log_dir, resume=resume)) if logging else None
        trainer = Trainer(
            fresh, splits["train"], splits["val"], cfg, runtime, work_dir=work_dir or out.with_name(out.name + ".work"),
            log=log, progress=_bars(progress), skip_bad=read.skip_bad, report=database.report, on_epoch=on_epoch,
            negatives=marked.negatives if marked else None,
        )
        result = trainer.run(resume=resume)
        trainer.restore_best()
    trained = trainer.model
    summary = splits.to_json()
    extra = {
        "epochs": trainer.epochs,
        "best_epoch": result.best_epoch,
        "best_val_score": result.best_score,
        "history": result.history,
        "train_config": dataclasses.asdict(cfg),
        "splits": summary,
        "read": record_read_options(read),
        "database": database.source.name,  # the name alone: a shared prompt file tells nothing of one's directories
        "train_images": len(splits["train"]),
        "pairs_per_second": result.pairs_per_second,
    }
    if marked:
        extra["feedback"] = {"marks": marked.relevant + marked.irrelevant, "relevant": marked.relevant, "queries": marked.queries}
    if runtime.main:
        trained.save_prompt_file(out, extra)
        if not keep_work:
            _remove_checkpoint(Path(work_dir) if work_dir else out.with_name(out.name + ".work"), owned=work_dir is None)
    barrier(runtime)  # every rank returns once the file is there
    return TrainReport(
        out, config, cfg, result.best_epoch, result.best_score, result.history, len(splits["train"]),
        len(splits["val"]), trained.trainable_parameter_count(), database.report, summary, warnings,
    )


def _remove_checkpoint(work: Path, *, owned: bool) -> None:
    """What a finished run no longer needs (several times the prompt file): its checkpoint, and the
    work directory itself where dbprompt chose it (a directory the user named may hold other things)."""
    (work / CHECKPOINT).unlink(missing_ok=True)
    if owned:
        shutil.rmtree(work, ignore_errors=True)


def _check_validation(splits: Splits, database: Database) -> None:
    """Epochs are chosen on validation: refuse to train with none rather than keep the last epoch unseen."""
    if splits["val"]:
        return
    if splits.config.val_fraction == 0:
        raise ValueError("--val-fraction 0 leaves no validation images to choose the epoch with; give a fraction above 0")
    raise DataError(
        str(database.source), TOO_FEW_IMAGES,
        f"{len(splits['train'])} training image(s) cannot spare one for validation (2 train, 1 validate at least)",
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
    report: str | os.PathLike | None = None,
    log: Callable[[str], None] = print,
    **options: Any,
) -> EvalReport:
    """Zero-shot and (given a prompt file) prompted Recall@K on a split, every image decoded once.

    Without split options the split recorded in the prompt file is reused, so the test images
    are those training never saw; read options it recorded for this database are reused too.
    `report`: a directory for an HTML report (recall@K curves, the validation curve, example
    queries).
    """
    split_kw, read_kw = split_kwargs(options, SplitConfig, ReadOptions)
    if report is not None and Path(report).exists() and not Path(report).is_dir():
        raise ValueError(f"--report {report}: exists and is not a directory")
    runtime = runtime or Runtime.resolve()
    models: dict[str, PromptedCLIP] = {}
    training: dict = {}
    if prompts is not None:
        pf = read_prompt_file(prompts)
        training = pf.extra
        # A named backbone, or the one the file records from local weights only; its fingerprint is checked.
        named = load_named_backbone(model, pretrained, device=runtime.device) if model else None
        prompted = PromptedCLIP.from_prompt_file(prompts, named, device=runtime.device)
        backbone = prompted.backbone
        label = "prompts (" + "+".join(prompted.prompts.kinds) + ")"
    elif model:
        backbone = load_named_backbone(model, pretrained, device=runtime.device)
    else:
        raise ValueError("give a prompt file, or a model for a zero-shot evaluation")
    models["zero-shot"] = PromptedCLIP(backbone, PromptConfig.none()).to(runtime.device)
    if prompts is not None:
        models[label] = prompted
    read = reuse_read_options(db, read_kw, training, prompts, log) if prompts is not None else ReadOptions(**read_kw)
    database = _read(db, read)
    require_captions(database, "evaluation")
    splits = split_records(database.records, dataclasses.replace(SplitConfig.from_recorded(training.get("splits", {})), **split_kw))
    warnings = splits.warnings(split, trained=bool(training))
    for warning in warnings:
        log(f"warning: {warning}")
    own, features = encode_split(
        list(models.values()), splits[split], runtime, batch_size=batch_size, skip_bad=read.skip_bad,
        report=database.report, progress=f"evaluating {split}" if progress else None,
    )
    ks = CURVE_KS if report is not None else TABLE_KS
    curves = {name: score(m, own, f, runtime, ks) for (name, m), f in zip(models.items(), features)}
    rows = {name: {k: v for k, v in m.items() if _in_table(k)} for name, m in curves.items()}
    result = EvalReport(
        split, len(own), sum(len(r.captions) for r in own), backbone.name, backbone.pretrained, rows, database.report,
        str(database.source), splits.how(), saturated_keys(list(rows["zero-shot"]), [len(r.captions) for r in own]),
        warnings,
    )
    if report is not None:
        from .report.page import ReportInputs, write_report

        inputs = ReportInputs(models, own, dict(zip(models, features)), curves, runtime, training or None)
        result.report = write_report(report, result, inputs)
    return result


def _zero_shot_prompts(out: Path, backbone: BackboneAdapter, tmp: Path) -> Path:
    """The untrained prompt file a zero-shot index of `backbone` keeps: the one `out` holds already (so that
    re-indexing reuses its vectors), else a new one in `tmp`."""
    from .index.manifest import PROMPTS

    kept = out / PROMPTS
    with contextlib.suppress(OSError, ValueError):
        pf = read_prompt_file(kept)
        if pf.config == PromptConfig.none() and pf.fingerprint == backbone.fingerprint():
            return kept
    return PromptedCLIP(backbone, PromptConfig.none()).save_prompt_file(tmp / "zero-shot.safetensors")


def _in_table(key: str) -> bool:
    """The metrics eval reports: ranks, and R@K at the table's K (a report's curves have every K)."""
    _, _, k = key.partition("_R@")
    return not k or int(k) in TABLE_KS


def build_index(
    db: str | os.PathLike | Database,
    prompts: str | os.PathLike | None,
    out: str | os.PathLike,
    *,
    kind: str = "auto",
    batch_size: int = 64,
    runtime: Runtime | None = None,
    progress: bool | None = None,
    backbone: BackboneAdapter | None = None,
    log: Callable[[str], None] = print,
    model: str | None = None,
    pretrained: str | None = None,
    force: bool = False,
    ray: str | bool | None = None,
    ray_workers: int | None = None,
    onnx_precision: str = "auto",
    **options: Any,
) -> IndexInfo:
    """Embed every image of `db` through the prompt file into the index directory `out` (created or updated).

    Read options the prompt file recorded for this database are reused unless given. The backbone:
    `backbone`, else `model`/`pretrained`, else the one the prompt file records (local weights only).
    Without a prompt file (`prompts=None`) the index is zero-shot: the backbone's own features, through
    an untrained prompt file that the index keeps, so a collection is searchable before any training.
    An index of another database, prompt file or backbone is replaced only with `force`. `ray`:
    embed on Ray actors (`ray_workers` of them, default one per GPU, else per CPU) of a local
    instance (True or "local") or of the cluster at an address ("auto", "HOST:PORT"). A `runtime` whose engine is
    "onnx" embeds with the towers exported into the index (`onnx_precision`: auto, fp32 or int8; index/onnx_embed.py).
    """
    (read_kw,) = split_kwargs(options, ReadOptions)
    on_ray = RayOptions.of(ray, ray_workers)
    if on_ray is not None:
        check_ray()  # before anything is loaded
    if prompts is None and backbone is None and model is None:
        raise ValueError("give a prompt file (--prompts), or a backbone (--model) for a zero-shot index")
    runtime = runtime or Runtime.resolve()
    if backbone is None and model is not None:
        backbone = load_named_backbone(model, pretrained, device=runtime.device)
    with tempfile.TemporaryDirectory() as tmp:
        prompts = _zero_shot_prompts(Path(out), backbone, Path(tmp)) if prompts is None else prompts
        read = reuse_read_options(db, read_kw, read_prompt_file(prompts).extra, prompts, log)
        return build_index_from(
            _read(db, read), prompts, out, kind=kind, batch_size=batch_size, runtime=runtime,
            skip_bad=read.skip_bad, backbone=backbone, progress=_bars(progress), force=force, ray=on_ray,
            onnx_precision=onnx_precision, log=log,
        )
