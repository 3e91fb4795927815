"""train, eval, info and demo: the prompt-tuning half of a user's day."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from ..backbones import load_backbone
from ..data import Record, assign_splits, records_for
from ..evaluate import evaluate
from ..metrics import format_table
from ..model import PromptedCLIP
from ..prompts import TRAIN_DEFAULTS, PromptConfig
from ..runtime import pick_device, resolve_bf16
from ..storage import load_prompted_model, read_prompt_file, save_prompt_file
from ..train import DEFAULT_ANCHORS, TrainConfig, train_candidates
from .common import add_data_args, add_model_args, add_runtime_args, add_split_args, backbone_from_args, load_db

TABLE_KEYS = ("trainable_params", "artifact_bytes") + tuple(
    f"{d}/{k}" for d in ("clip_benchmark", "open_clip") for k in ("t2i_R@1", "t2i_R@5", "t2i_R@10", "i2t_R@1")
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train prompts on a database", description="Train textual and visual prompts on a frozen backbone; writes one small prompt file.")
    add_data_args(p)
    p.add_argument("--out", required=True, help="prompt file to write (.safetensors)")
    add_model_args(p, required=True)
    add_prompt_args(p)
    add_train_args(p)
    add_split_args(p)
    add_runtime_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="Recall@K zero-shot vs with prompts", description="Evaluate text<->image retrieval on a split: zero-shot and with a prompt file, side by side.")
    add_data_args(p)
    p.add_argument("--prompts", default=None, help="prompt file; without it only zero-shot is evaluated")
    add_model_args(p, required=False)
    p.add_argument("--split", default="test", choices=["train", "val", "test", "all"])
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_split_args(p, defaults_from_prompts=True)
    add_runtime_args(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("info", help="show what a prompt file holds", description="Print a prompt file's metadata: backbone, fingerprint, prompt config, training summary.")
    p.add_argument("file")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("demo", help="run the whole day offline on a built-in synthetic database", description="Build a synthetic database, evaluate zero-shot, train prompts, evaluate again, and index it for search.")
    p.add_argument("--dir", default=".demo", help="working directory (default: %(default)s)")
    p.add_argument("--images", type=int, default=600, help="images in the synthetic database")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default: the demo's own)")
    p.add_argument("--model", default=None, help="backbone (default: the demo's own)")
    p.add_argument("--serve", action="store_true", help="start the web server at the end")
    p.add_argument("--port", type=int, default=8000)
    add_runtime_args(p)
    p.set_defaults(func=cmd_demo)


def add_prompt_args(p: argparse.ArgumentParser) -> None:
    d = TRAIN_DEFAULTS
    g = p.add_argument_group("prompts")
    g.add_argument("--text-len", type=int, default=d.text_len, help="textual prompt vectors (0: none)")
    g.add_argument("--text-depth", type=int, default=d.text_depth, help="layers with their own textual prompts (1: shallow, 0: every layer)")
    g.add_argument("--text-init", default=d.text_init, help='initialise the textual prompt from a phrase, e.g. "a photo of a"')
    g.add_argument("--visual-len", type=int, default=d.visual_len, help="visual prompt tokens (0: none)")
    g.add_argument("--visual-depth", type=int, default=d.visual_depth, help="layers with their own visual prompts (1: shallow, 0: every layer)")
    g.add_argument("--gate", action=argparse.BooleanOptionalAction, default=d.gate, help="start exactly at zero-shot through a residual gate (costs a second forward pass per encode)")
    g.add_argument("--vocab", type=int, default=d.vocab, help="tune the token embeddings of up to this many of the training captions' tokens, starting at zero-shot (0: none; default: %(default)s)")
    g.add_argument("--prompt-dropout", type=float, default=d.dropout, help="drop each prompt vector and word offset with this probability in a training step")
    g.add_argument("--couple", action=argparse.BooleanOptionalAction, default=d.couple, help="MaPLe-style: derive the visual prompts from the textual ones by a learned linear map")


def add_train_args(p: argparse.ArgumentParser) -> None:
    d = TrainConfig()
    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=int, default=d.epochs)
    g.add_argument("--lr", type=float, default=d.lr)
    g.add_argument("--weight-decay", type=float, default=d.weight_decay)
    g.add_argument("--warmup", type=float, default=d.warmup_fraction, help="fraction of steps for linear warm-up")
    g.add_argument("--anchor", type=float, nargs="+", default=list(DEFAULT_ANCHORS), help="pull of caption features towards zero-shot's (KgCoOp-style; 0: off); with several, one training each and validation keeps the best (default: %(default)s)")
    g.add_argument("--calibrate-temperature", action=argparse.BooleanOptionalAction, default=d.calibrate_temperature, help="train the loss's temperature from the value that fits the untrained model on this database, not the backbone's")
    g.add_argument("--grad-accum", type=int, default=d.grad_accum)
    g.add_argument("--seed", type=int, default=d.seed)
    g.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every, help="optimizer steps between checkpoints")
    g.add_argument("--work-dir", default=None, help="checkpoint directory (default: OUT.work)")
    g.add_argument("--resume", action="store_true", help="continue from the work directory's checkpoint")
    g.add_argument("--no-progress", action="store_true")


def _split(records: list[Record], val: float, test: float, seed: int) -> dict[str, list[Record]]:
    records = assign_splits(records, val_fraction=val, test_fraction=test, seed=seed)
    return {s: records_for(records, s) for s in ("train", "val", "test")} | {"all": records}


def cmd_train(args: argparse.Namespace) -> int:
    db = load_db(args)
    splits = _split(db.records, args.val_fraction, args.test_fraction, args.split_seed)
    device = pick_device(args.device)
    bf16 = resolve_bf16(device, args.bf16)
    config = PromptConfig(
        text_len=args.text_len,
        text_depth=args.text_depth,
        text_init=args.text_init,
        visual_len=args.visual_len,
        visual_depth=args.visual_depth,
        gate=args.gate,
        vocab=args.vocab,
        dropout=args.prompt_dropout,
        couple=args.couple,
    )
    if not config.kinds:
        raise ValueError("nothing to train: --text-len, --visual-len and --vocab are all 0")
    configs = [
        TrainConfig(
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            weight_decay=args.weight_decay,
            warmup_fraction=args.warmup,
            grad_accum=args.grad_accum,
            seed=args.seed,
            checkpoint_every=args.checkpoint_every,
            anchor=anchor,
            calibrate_temperature=args.calibrate_temperature,
        )
        for anchor in dict.fromkeys(args.anchor)
    ]
    backbone = backbone_from_args(args, device)
    vocabulary = PromptedCLIP.caption_vocabulary(backbone, config, [c for r in splits["train"] for c in r.captions])

    def fresh() -> PromptedCLIP:
        torch.manual_seed(args.seed)
        return PromptedCLIP(backbone, config, vocabulary)

    out = Path(args.out)
    print(
        f"training {'+'.join(config.kinds)} prompts ({fresh().trainable_parameter_count():,} parameters) on "
        f"{backbone.name} [{backbone.pretrained}]: {len(splits['train'])} train / {len(splits['val'])} val images, "
        f"device {device}, bf16 {'on' if bf16 else 'off'}"
    )
    model, result, cfg = train_candidates(
        fresh,
        splits["train"],
        splits["val"],
        configs,
        device=device,
        bf16=bf16,
        work_dir=args.work_dir or out.with_name(out.name + ".work"),
        resume=args.resume,
        progress=not args.no_progress,
    )
    extra = {
        "best_epoch": result.best_epoch,
        "best_val_score": result.best_score,
        "history": result.history,
        "train_config": cfg.__dict__,
        "splits": {"val_fraction": args.val_fraction, "test_fraction": args.test_fraction, "seed": args.split_seed},
        "database": str(Path(args.db).resolve()),
        "train_images": len(splits["train"]),
        "pairs_per_second": result.pairs_per_second,
    }
    save_prompt_file(out, model, extra)
    print(
        f"wrote {out} ({out.stat().st_size:,} bytes); anchor {cfg.anchor:g}, best epoch {result.best_epoch} "
        f"(0 = before training) by validation T2I R@1 {result.best_score:.1f}"
    )
    if result.best_epoch == 0 and config.gate:  # gated prompts start exactly at zero-shot
        print(
            "note: no trained epoch beat zero-shot on validation, so this prompt file ranks exactly as zero-shot "
            "does. Prompts adapt mostly the captions' side: where the images themselves differ from the "
            "backbone's (textures, noise, rotation), they were seen to gain little. The best there was a "
            "visual-only prompt with 4x the epochs: --text-len 0 --vocab 0 --visual-len 32 --lr 1e-2 "
            f"--epochs {4 * cfg.epochs} (+1.6 to +3.5 test points; BENCHMARKS.md, visual shift)."
        )
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    device = pick_device(args.device)
    bf16 = resolve_bf16(device, args.bf16)
    split_defaults = {"val_fraction": 0.1, "test_fraction": 0.1, "seed": 0}
    prompted = None
    if args.prompts:
        pf = read_prompt_file(args.prompts)
        split_defaults.update(pf.extra.get("splits", {}))
        if args.model and args.model != pf.backbone:
            raise ValueError(f"{args.prompts} was trained on {pf.backbone}, not --model {args.model}")
        backbone = load_backbone(pf.backbone, pf.pretrained, device=device)
        prompted = load_prompted_model(args.prompts, backbone, device=device)
    else:
        if not args.model:
            raise ValueError("give --prompts FILE, or --model NAME for a zero-shot evaluation")
        backbone = backbone_from_args(args, device)
    db = load_db(args)
    splits = _split(
        db.records,
        args.val_fraction if args.val_fraction is not None else split_defaults["val_fraction"],
        args.test_fraction if args.test_fraction is not None else split_defaults["test_fraction"],
        args.split_seed if args.split_seed is not None else split_defaults["seed"],
    )
    records = splits[args.split]
    zero_shot = PromptedCLIP(backbone, PromptConfig(text_len=0, visual_len=0)).to(device)
    rows = [("zero-shot", evaluate(zero_shot, records, device=device, bf16=bf16, batch_size=args.batch_size) | {"trainable_params": 0, "artifact_bytes": 0})]
    if prompted is not None:
        metrics = evaluate(prompted, records, device=device, bf16=bf16, batch_size=args.batch_size)
        metrics |= {
            "trainable_params": pf.parameter_count,
            "artifact_bytes": Path(args.prompts).stat().st_size,
        }
        rows.append(("prompts (" + "+".join(pf.config.kinds) + ")", metrics))
    if args.json:
        print(json.dumps({"split": args.split, "images": len(records), "backbone": backbone.name, "rows": dict(rows)}, indent=2))
    else:
        print(f"{args.split} split: {len(records)} images, {sum(len(r.captions) for r in records)} captions, backbone {backbone.name} [{backbone.pretrained}]")
        print("R@K in %; clip_benchmark = every caption a query, any caption a hit; open_clip = 1:1 pairs (first caption)")
        print(format_table(rows, TABLE_KEYS))
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    pf = read_prompt_file(args.file)
    info = {
        "file": str(pf.path),
        "bytes": pf.path.stat().st_size,
        "dbprompt_version": pf.metadata.get("dbprompt_version"),
        "backbone": pf.backbone,
        "pretrained": pf.pretrained,
        "backbone_fingerprint": pf.fingerprint,
        "prompt_config": json.loads(pf.config.to_json()),
        "parameters": pf.parameter_count,
        "tensors": {k: list(v.shape) for k, v in pf.tensors.items()},
        "training": pf.extra,
    }
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    for key, value in info.items():
        if key == "training":
            summary = {k: value[k] for k in ("best_epoch", "best_val_score", "train_images", "database") if k in value}
            print(f"{key:22} {json.dumps(summary)}")
        else:
            print(f"{key:22} {value if not isinstance(value, dict) else json.dumps(value)}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from ..demo import run_demo

    return run_demo(args)
