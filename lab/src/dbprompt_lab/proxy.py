"""The proxy backbones: small open_clip CLIPs pre-trained on the synthetic world, shipped and loaded by name.

No pre-trained CLIP can be downloaded here, so dbprompt and the lab ship their own, through the same
open_clip code path as any real model (a config `NAME.json`, weights as fp16 safetensors beside it),
pre-trained by `dbprompt-lab proxy pretrain --model NAME`:
- `dbprompt-proxy` (dbprompt's assets/models): 13.2 M parameters, 64 px, 4 + 4 layers, the contrastive
  loss, on the proxy world's source domain;
- `dbprompt-proxy-b` (the lab's models/, issue 28): 28.5 M parameters, 96 px, patch 16, 6 + 6 layers
  (vision width 384, text width 256), SigLIP's sigmoid loss, on the broad world's source domain;
- `dbprompt-proxy-b-trial`: proxy-b's world, input and loss on the first proxy's widths and depths (4 + 4
  layers), to try a pre-training recipe in an hour on a CPU before proxy-b spends a day on it. Never shipped.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
from safetensors.torch import save as st_save

from dbprompt.atomic import atomic_write_bytes, atomic_write_text
from dbprompt.backbones import RANDOM, add_model_dir, load_backbone
from dbprompt.backbones.factory import MODEL_CONFIG_DIR
from dbprompt.data import Record, assign_splits, load_database, records_for
from dbprompt.evaluation import evaluate_models
from dbprompt.model import PromptedCLIP
from dbprompt.prompts import PromptConfig
from dbprompt.runtime import Runtime
from dbprompt.training.config import TrainConfig
from dbprompt.training.keys import CaptionKeys
from dbprompt.training.checkpoint import checkpoint_parameters
from dbprompt.training.trainer import Trainer, random_order

from . import models
from .batches import find_look_alikes, grouped_order, pair_order
from .probe import VOCABULARY, linear_probe, probe
from .sigmoid_loss import SigmoidLoss
from .swap_negatives import SwapKeys, SwapNegativeLoss, format_share
from .world import broad, write_database
from .world.broad.captions import partial_captions

# The lab's models load by name from a source checkout too, where no entry point is installed.
add_model_dir(models.DIR)

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
# Single-shape images of the linear attribute probe in a pre-training record (3/4 fit the classifier, 1/4 test it).
LINEAR_IMAGES = 2400
# Validation images whose captions the text cosine is logged on after every epoch.
PROBE_IMAGES = 200
# The training images given a partial caption: with three full captions each, about 1 text in 10 a step draws.
PARTIAL_SHARE = 0.4
# The recipe of the shipped weights (BENCHMARKS.md, Proxy backbone): what `dbprompt proxy pretrain` does by default.
IMAGES = 28000
# Pre-training learns the backbone's own temperature with its weights, as CLIP does (the
# shipped weights were made so); the calibrated one is for adapting an already trained model.
# Every image backpropagates: the shipped weights predate prompt training's --image-backward.
RECIPE = TrainConfig(
    epochs=16, batch_size=64, lr=1e-3, weight_decay=0.1, warmup_fraction=0.05, calibrate_temperature=False,
    image_backward=1.0,
)


@dataclass(frozen=True)
class Proxy:
    """One proxy backbone: what it is pre-trained on, how, and where its shipped files live."""

    name: str
    world: str
    image_size: int
    images: int
    recipe: TrainConfig
    sigmoid: bool  # SigLIP's loss; else the contrastive loss dbprompt trains with
    home: Path
    # Some training images also captioned by one short text true of it ("a red star"; the broad world only).
    partial_captions: bool = False

    @property
    def weights(self) -> Path:
        return self.home / f"{self.name}.safetensors"

    @property
    def record(self) -> Path:
        return self.home / f"{self.name}.record.json"


PROXIES: dict[str, Proxy] = {
    p.name: p
    for p in (
        Proxy(NAME, "proxy", 64, IMAGES, RECIPE, False, MODEL_CONFIG_DIR),
        # Sized for one H100 within a 10-minute command (lab/README.md, "The second proxy"): 1.24 M pairs, 2.9
        # times the first proxy's, every image's features backpropagated (it learns from scratch).
        Proxy(
            "dbprompt-proxy-b", "broad", 96, 64000,
            replace(RECIPE, epochs=20, batch_size=512, checkpoint_every=100), True, models.DIR, partial_captions=True,
        ),
        Proxy(
            "dbprompt-proxy-b-trial", "broad", 96, 16000, replace(RECIPE, epochs=4, checkpoint_every=100), True, models.DIR,
            partial_captions=True,
        ),
    )
}
# `pretrain(init=SHIPPED)` starts from the proxy's shipped weights.
SHIPPED = "shipped"
# Where the contrastive loss pre-trains a config made for the sigmoid one (whose scale starts at 10), it starts
# at CLIP's temperature, 0.07, as the first proxy did.
CONTRASTIVE_SCALE = math.log(1 / 0.07)


def get_proxy(name: str) -> Proxy:
    try:
        return PROXIES[name]
    except KeyError:
        raise ValueError(f"unknown proxy {name!r}; choose one of {', '.join(PROXIES)}") from None


def measured_on(model: str) -> tuple[str, int]:
    """(world, image size) of the databases a model is measured on: a proxy's own; any other model the proxy
    world's at 64 px, as the comparison always drew them."""
    p = PROXIES.get(model)
    return (p.world, p.image_size) if p else ("proxy", 64)


def weights_file(value: str) -> str:
    """argparse type of the lab's --weights/--pretrained: 'random' or a file that exists (weights or a
    pre-training checkpoint), checked before any image is written or model built."""
    if value != RANDOM and not Path(value).is_file():
        raise argparse.ArgumentTypeError(f"no such weights file: {value} (a weights file, a pre-training checkpoint, or '{RANDOM}')")
    return value


def plain_weights_file(value: str) -> str:
    """`weights_file` for what hands the weights to dbprompt's own commands, which read weights files, not checkpoints."""
    value = weights_file(value)
    if value != RANDOM and value.endswith(".safetensors") and checkpoint_parameters(value) is not None:
        raise argparse.ArgumentTypeError(
            f"{value} is a pre-training checkpoint; dbprompt's commands read weights files: use the one the run writes "
            "at its end (WORK_DIR/MODEL.safetensors)"
        )
    return value


def needs_weights(model: str, pretrained: str | None) -> None:
    """Refuse to measure a proxy that has no weights yet: its default would be random weights, silently."""
    p = PROXIES.get(model)
    if pretrained is None and p is not None and not p.weights.exists():
        raise FileNotFoundError(
            f"{model} has no shipped weights yet ({p.weights}): pre-train them (`dbprompt-lab proxy pretrain --model {model}`), "
            "or pass --pretrained CHECKPOINT, or --pretrained random to measure the untrained architecture"
        )


def _database(work: Path, kind: str, world: str) -> Path:
    """The folder of the source or source-test database of `world` (the proxy world's keep their first names)."""
    return work / (kind if world == "proxy" else f"{world}-{kind}")


def source_test_records(work_dir: Path, proxy: Proxy = PROXIES[NAME], world: str | None = None) -> list:
    world = world or proxy.world
    db = _database(Path(work_dir), "source-test", world)
    if not (db / "metadata.jsonl").exists():
        write_database(db, TEST_IMAGES, domain="source", seed=TEST_SEED, image_size=proxy.image_size, world=world)
    return load_database(db).records


def pretrain(
    work_dir: str | Path,
    *,
    model: str = NAME,
    world: str | None = None,
    images: int | None = None,
    cfg: TrainConfig | None = None,
    hard_negatives: int = 0,
    loss: str | None = None,
    swap_negatives: Mapping[str, float] | None = None,
    twins: bool = False,
    init: str | None = None,
    runtime: Runtime | None = None,
    resume: bool = False,
    out: Path | None = None,
    progress: bool = True,
) -> dict:
    """Pre-train a proxy from random (or `init`) weights on a world's source domain (its own by default); write fp16
    weights + a record (to `out`, default WORK_DIR/NAME.safetensors, and the record beside it).

    `images`, `cfg`: the proxy's recipe unless given. `hard_negatives` K > 1 makes batches of runs of K
    look-alike images (batches.py). `loss`: "sigmoid" or "contrastive" (default: the proxy's).
    `swap_negatives`: attribute -> share of captions whose word for it is swapped into a negative
    (swap_negatives.py). `twins`: shape twins (world/samples.py) for source images, each pair in one batch.
    `init`: start from these weights (a weights file, a pre-training checkpoint, or SHIPPED: the proxy's own)
    instead of random ones.
    Every epoch logs the text cosine of a one-word swap on validation captions.
    """
    proxy = get_proxy(model)
    world, images, cfg = world or proxy.world, images or proxy.images, cfg or proxy.recipe
    loss = loss or ("sigmoid" if proxy.sigmoid else "contrastive")
    if loss not in ("sigmoid", "contrastive"):
        raise ValueError(f"unknown loss {loss!r}; choose sigmoid or contrastive")
    if twins and hard_negatives > 1:
        raise ValueError("twins are batched in pairs, look-alikes in runs: choose --twins or --hard-negatives")
    if twins and (images % 2 or cfg.batch_size % 2):
        raise ValueError(f"twins come in pairs: --images ({images}) and --batch-size ({cfg.batch_size}) must be even")
    if init not in (None, SHIPPED) and not Path(init).is_file():
        raise ValueError(f"--init {init}: no such weights file (or '{SHIPPED}' for the proxy's own)")
    # Built before any image is written or read, so a bad attribute stops the run at once; it wraps the keys later.
    swap_keys = SwapKeys(None, VOCABULARY[world], swap_negatives, cfg.seed) if swap_negatives else None
    work = Path(work_dir)
    out = out or work / f"{proxy.name}.safetensors"
    db = _database(work, "source-twins" if twins else "source", world)
    if not (db / "metadata.jsonl").exists():
        print(f"writing {images} {world}-world source images{' in twin pairs' if twins else ''} to {db}")
        write_database(db, images, domain="source", seed=SOURCE_SEED, image_size=proxy.image_size, world=world, twins=twins)
    # Fewer images than the database holds (a trial) are its first ones: a trial reads the full run's database.
    records = (_twin_splits if twins else _splits)(load_database(db).records[:images])
    splits = {s: records_for(records, s) for s in ("train", "val")} | {"test": source_test_records(work, proxy, world)}
    keys = None
    if proxy.partial_captions:
        if world != "broad":
            raise ValueError(f"{proxy.name}'s partial captions are the broad world's; it cannot pre-train on the {world} world")
        splits["train"], keys = _with_partial_captions(splits["train"], splits["val"], twins)
    runtime = runtime or Runtime.resolve()
    if init is None:
        backbone = load_backbone(proxy.name, RANDOM, device=runtime.device, seed=cfg.seed)
    else:
        backbone = load_weights(proxy.name, None if init == SHIPPED else init, runtime.device)
    backbone.requires_grad_(True)
    net = PromptedCLIP(backbone, PromptConfig.none())
    print(
        f"pre-training {proxy.name} ({sum(p.numel() for p in backbone.parameters()):,} parameters) on "
        f"{len(splits['train'])} {world}-world source images, {runtime.describe()}"
    )
    order = pair_order if twins else random_order
    if hard_negatives > 1:
        # Enough candidates that a run still fills when its closest look-alikes are taken.
        look_alikes = find_look_alikes(splits["train"], 4 * hard_negatives)

        def order(rng, n):
            return grouped_order(look_alikes, hard_negatives, rng)

    trainer = Trainer(
        net, splits["train"], splits["val"], cfg, runtime, work_dir=work, progress=progress, order=order,
        on_epoch=lambda entry: _log_text_cosine(net, splits["val"][:PROBE_IMAGES], world, runtime, entry),
    )
    if keys is not None:
        trainer.keys = keys
    if (loss == "sigmoid" or swap_negatives) and runtime.world > 1:
        raise ValueError(f"{loss} pre-training with these options runs on one process (it gathers nothing across ranks)")
    if loss == "sigmoid":
        # The Trainer's loss holds no parameter here (the temperature is the backbone's), so swapping it
        # leaves the optimizer as built; the bias it adds is the backbone's too.
        trainer.loss = SigmoidLoss(backbone.model)
    elif proxy.sigmoid and not resume and init is None:
        with torch.no_grad():
            backbone.model.logit_scale.fill_(CONTRASTIVE_SCALE)
    if swap_keys is not None:
        swap_keys.inner, trainer.keys = trainer.keys, swap_keys
        trainer.loss = SwapNegativeLoss(trainer.loss, net)
    result = trainer.run(resume=resume)
    trainer.restore_best()
    save_weights(backbone, out, proxy.name)
    # Record the quality of what ships (fp16-rounded), not of the fp32 weights in memory.
    shipped = load_backbone(proxy.name, str(out), device=runtime.device)
    record = {
        "model": proxy.name,
        "world": world,
        "loss": loss,
        "swap_negatives": dict(swap_negatives or {}),
        "twins": twins,
        "init": init,
        "partial_captions": proxy.partial_captions,
        "source_test_images": len(splits["test"]),
        "source_test_seed": TEST_SEED,
        "source_test_metrics": _source_metrics(shipped, splits["test"], runtime),
    }
    record["attribute_probe"] = attribute_probe(shipped, splits["test"], world, runtime)
    record["linear_probe"] = linear_probe(PromptedCLIP(shipped, PromptConfig.none()).eval(), world, LINEAR_IMAGES, runtime)
    if world != "proxy":
        # How much of the first proxy's world it knows without seeing it: the proxy world's source test.
        record["proxy_world_test_metrics"] = _source_metrics(shipped, source_test_records(work, proxy, "proxy"), runtime)
    record |= {
        "best_epoch": result.best_epoch,
        "train_images": len(splits["train"]),
        "train_config": asdict(cfg),
        "train_seconds": result.seconds,
        "pairs_per_second": result.pairs_per_second,
        "device": runtime.describe(),
        "history": result.history,
        "command": f"dbprompt-lab proxy pretrain --model {proxy.name} --world {world} --images {images} --epochs {cfg.epochs} "
        f"--batch-size {cfg.batch_size} --lr {cfg.lr} --loss {loss}" + (f" --hard-negatives {hard_negatives}" if hard_negatives > 1 else "")
        + (f" --swap-negatives {format_share(swap_negatives)}" if swap_negatives else "")
        + (" --twins" if twins else "") + (f" --init {init}" if init else ""),
    }
    atomic_write_text(out.with_name(f"{proxy.name}.record.json"), json.dumps(record, indent=2))
    return record


def _splits(records: list[Record]) -> list[Record]:
    return assign_splits(records, val_fraction=VAL_FRACTION, test_fraction=0.0, seed=SOURCE_SEED)


def _twin_splits(records: list[Record]) -> list[Record]:
    """Splits drawn for the first of each pair and given to both: a twin never validates on its pair's training."""
    firsts = _splits(records[0::2])
    return [replace(r, split=first.split) for first, *pair in zip(firsts, records[0::2], records[1::2]) for r in pair]


def _with_partial_captions(train: list[Record], val: list[Record], twins: bool) -> tuple[list[Record], CaptionKeys]:
    """`PARTIAL_SHARE` of the training images get one of their partial captions (drawn once, by the image's
    index), and the relevance keys make every image a positive of each partial caption true of it."""
    domain = broad.DOMAINS["source"]
    extended, every = [], []
    for r in train:
        index = int(Path(r.path).stem)
        texts = partial_captions(broad.scene_of(index, domain, SOURCE_SEED, twins))
        rng = np.random.default_rng([SOURCE_SEED, index])
        given = (texts[rng.integers(len(texts))],) if rng.random() < PARTIAL_SHARE else ()
        extended.append(replace(r, captions=(*r.captions, *given)))
        every.append(replace(r, captions=(*r.captions, *texts)))
    # The Trainer numbers its images train first, then validation: the keys number them alike.
    return extended, CaptionKeys(every + list(val), labels=True)


def save_weights(backbone, out: str | Path, model: str) -> None:
    """The backbone's weights as a proxy ships them (fp16 open_clip safetensors), atomically: loadable by
    `load_backbone(model, out)`, `--pretrained out` and `--weights out`."""
    state = {k: v.detach().to(torch.float16).cpu().contiguous() for k, v in backbone.model.state_dict().items()}
    atomic_write_bytes(out, st_save(state, metadata={"format": "open_clip", "model": model}))


def load_weights(model: str, weights: str | None = None, device: str = "cpu"):
    """A proxy's backbone with its shipped weights (None), a weights file, or the backbone of a pre-training
    checkpoint (the Trainer's, which `pretrain` writes every few steps), to follow a pre-training as it goes."""
    is_safetensors = weights is not None and weights.endswith(".safetensors") and Path(weights).is_file()
    found = checkpoint_parameters(weights) if is_safetensors else None
    if found is None:
        return load_backbone(model, weights, device=device)
    prefix = "backbone.model."
    backbone = load_backbone(model, RANDOM, device=device)
    backbone.model.load_state_dict({k[len(prefix) :]: v for k, v in found.items() if k.startswith(prefix)})
    return backbone


def attribute_probe(backbone, test: list, world: str, runtime: Runtime) -> dict[str, float]:
    """Per attribute (shape, colour, size), how often the true caption beats a one-word swap on 400 test images:
    class folders need shapes, which a world told apart by colour and place may never have taught (issue 25)."""
    found = probe(PromptedCLIP(backbone, PromptConfig.none()).eval(), test[:400], VOCABULARY[world], runtime)
    return {attribute: round(r["true_wins"], 4) for attribute, r in found.items()}


def _log_text_cosine(net: PromptedCLIP, records: list, world: str, runtime: Runtime, entry: dict) -> None:
    """How alike the text tower embeds a caption and its one-word swaps (1.000: the word is ignored), after an
    epoch: a pre-training that drops a word early rarely learns it again, so it shows in hours, not days."""
    found = probe(net.eval(), records, VOCABULARY[world], runtime)
    seen = ", ".join(f"{a} {r['text_cosine']:.3f}" for a, r in found.items())
    print(f"epoch {entry['epoch']}: text cosine of a one-word swap (1.000: word ignored): {seen}", flush=True)


def _source_metrics(backbone, test: list, runtime: Runtime) -> dict[str, float]:
    return evaluate_models({"zero-shot": PromptedCLIP(backbone, PromptConfig.none())}, test, runtime)["zero-shot"]


def check(work_dir: str | Path, *, model: str = NAME, runtime: Runtime | None = None) -> tuple[float, float]:
    """Re-measure a shipped proxy's source test T2I R@1: (recorded, now)."""
    proxy = get_proxy(model)
    if not (proxy.weights.exists() and proxy.record.exists()):
        raise FileNotFoundError(
            f"{proxy.name} has no shipped weights yet ({proxy.weights} and its .record.json): pre-train them with "
            f"`dbprompt-lab proxy pretrain --model {proxy.name}` and copy both files there"
        )
    record = json.loads(proxy.record.read_text())
    runtime = runtime or Runtime.resolve()
    test = source_test_records(Path(work_dir), proxy, record.get("world", proxy.world))
    now = _source_metrics(load_backbone(proxy.name, device=runtime.device), test, runtime)
    return record["source_test_metrics"]["clip_benchmark/t2i_R@1"], now["clip_benchmark/t2i_R@1"]
