"""Tuning methods compared like for like: each only decides what in a PromptedCLIP is trainable.

Prompts (dbprompt's method, or the literature's inserted prompts registered by `prompts`), full
fine-tuning, LoRA and projection-only all then go through the same Trainer and the same
evaluation, so a comparison differs in the method alone. The methods of the comparison are
defined here; the candidates of past sweeps are data, one JSON file per sweep in `experiments/`
with the commands that ran it, and are looked up by name the same way. A candidate that used an
option dbprompt no longer has is retired: its record stays, with the reason, and it cannot run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Sequence

import torch
from safetensors.torch import save as st_save
from torch import nn

from dbprompt.backbones.base import BackboneAdapter
from dbprompt.model import PromptedCLIP
from dbprompt.prompts.config import PromptConfig
from dbprompt.training.config import TrainConfig

from .prompts import InsertedConfig

EXPERIMENTS = Path(__file__).resolve().parent / "experiments"


@dataclass(frozen=True)
class Method:
    name: str
    # What is trained: "none", "prompts", "full", "lora" or "projection".
    tune: str
    # A registered prompt method's config: dbprompt's PromptConfig or the lab's InsertedConfig.
    prompts: Any = PromptConfig.none()
    lr: float = 1e-3
    # Further learning rates tried; validation picks one (per database, seed and size).
    other_lrs: tuple[float, ...] = ()
    # Successive halving over the learning rates (issue 28): each trains this share of the budget's steps, on
    # the whole run's schedule; validation keeps one, which continues to the end. 0: each trains to the end.
    halving_rung: float = 0.0
    lora_rank: int = 8
    # TrainConfig.calibrate_temperature. Off for the reference points, which train as their
    # literature does (at the backbone's temperature; full fine-tuning also learns it).
    calibrate_temperature: bool = False
    # TrainConfig.image_backward: the fraction of a step's images that backpropagate into the tower.
    image_backward: float = 1.0
    notes: str = field(default="", compare=False)

    @classmethod
    def from_json(cls, data: dict) -> "Method":
        """A sweep's candidate; a RetiredMethod error names what of it dbprompt no longer has."""
        data = dict(data)
        if data.pop("anchors", [0.0]) != [0.0]:
            raise RetiredMethod("--anchor (KgCoOp's text anchor)")
        options = data.pop("prompts", {"text_len": 0, "visual_len": 0})
        # What an experiment file does not name is off (the defaults of its time had neither).
        prompts = _inserted(options) if options.get("gate") is False else _gated({"vocab": 0, "visual_adapter": 0} | options)
        if "other_lrs" in data:
            data["other_lrs"] = tuple(data["other_lrs"])
        return cls(prompts=prompts, **data)


class RetiredMethod(ValueError):
    """A sweep's candidate that used an option dbprompt no longer has (it lost, and was removed)."""


# Format-2 options of dbprompt's method that were removed, and their defaults then.
_REMOVED = {"couple": False, "text_norm": False, "visual_norm": False, "visual_readout": 0, "readout_tokens": True,
            "visual_start": 0, "dropout": 0.0, "text_init": None, "gate": True}


def _gated(options: dict) -> PromptConfig:
    used = sorted(k for k, default in _REMOVED.items() if k in options and options[k] != default)
    if used:
        raise RetiredMethod(", ".join(f"--{k.replace('_', '-')}" for k in used))
    return PromptConfig(**{k: v for k, v in options.items() if k not in _REMOVED})


def _inserted(options: dict) -> InsertedConfig:
    """The literature's ungated prompts of an old sweep (`"gate": false`), as the lab's inserted method."""
    known = {f.name for f in fields(InsertedConfig)}
    extra = sorted(k for k, v in options.items() if k not in known | {"gate"} and v not in (0, False, None))
    if extra:
        raise RetiredMethod(f"inserted prompts with {', '.join(extra)}")
    return InsertedConfig(**{k: v for k, v in options.items() if k in known})


def attention_module_names(backbone: BackboneAdapter) -> list[str]:
    """Both towers' attention modules (LoRA's targets), relative to the backbone."""
    return [n for n, m in backbone.named_modules() if isinstance(m, nn.MultiheadAttention)]


def projection_parameters(backbone: BackboneAdapter) -> list[nn.Parameter]:
    """The output projections of both towers: open_clip's text_projection and visual.proj, or a timm head."""
    params: list[nn.Parameter] = []
    model = backbone.model
    text = getattr(model, "text", model)
    proj = getattr(text, "text_projection", None)
    if isinstance(proj, nn.Linear):
        params += list(proj.parameters())
    elif isinstance(proj, nn.Parameter):
        params.append(proj)
    visual = model.visual
    if isinstance(getattr(visual, "proj", None), nn.Parameter):
        params.append(visual.proj)
    elif hasattr(visual, "head"):
        params += list(visual.head.parameters())
    return params


def build(method: Method, backbone: BackboneAdapter, seed: int = 0, captions: Sequence[str] = ()) -> PromptedCLIP:
    """A model whose trainable parameters are exactly the method's. Mutates `backbone` for LoRA/full/projection.

    `captions` (the training captions) choose the tokens of a vocabulary-tuning method.
    """
    torch.manual_seed(seed)
    backbone.requires_grad_(False)
    if method.tune == "full":
        backbone.requires_grad_(True)
    elif method.tune == "projection":
        for p in projection_parameters(backbone):
            p.requires_grad_(True)
    elif method.tune == "lora":
        from peft import LoraConfig, inject_adapter_in_model

        config = LoraConfig(r=method.lora_rank, lora_alpha=2 * method.lora_rank, target_modules=attention_module_names(backbone))
        inject_adapter_in_model(config, backbone)
    elif method.tune not in ("none", "prompts"):
        raise ValueError(f"unknown tuning kind {method.tune!r}")
    return PromptedCLIP.for_captions(backbone, method.prompts, captions)


def artifact_bytes(model: PromptedCLIP) -> int:
    """Size of what a user would store per database: the trainable tensors as safetensors."""
    tensors = {n: p.detach().float().contiguous() for n, p in model.named_parameters() if p.requires_grad}
    return len(st_save(tensors)) if tensors else 0


# The single-modality reference points as the literature runs them: shallow, inserted.
_LITERATURE = InsertedConfig(text_len=8, text_depth=1, visual_len=8, visual_depth=1)

COMPARED_METHODS = (
    Method("zero-shot", "none"),
    Method("textual", "prompts", _LITERATURE.replace(visual_len=0), lr=3e-3, notes="CoOp-style"),
    Method("visual-shallow", "prompts", _LITERATURE.replace(text_len=0), lr=3e-3, notes="VPT-shallow"),
    Method("visual-deep", "prompts", _LITERATURE.replace(text_len=0, visual_depth=0), lr=3e-3, notes="VPT-deep"),
    Method("textual+visual", "prompts", PromptConfig(vocab=0, visual_adapter=0), lr=1e-3, notes="the paper's method: deep, gated"),
    Method(
        "dbprompt",
        "prompts",
        PromptConfig(),
        lr=TrainConfig().lr,
        calibrate_temperature=TrainConfig().calibrate_temperature,
        image_backward=TrainConfig().image_backward,
        notes="dbprompt train's defaults: the paper's method, vocabulary offsets, image adapters, a calibrated temperature, "
        "backward through three eighths of each step's images",
    ),
    # Validation chose lr 1e-4 over 1e-5 in 23 of 24 runs, on this CPU and on a GPU
    # (BENCHMARKS.md), so 1e-5, which doubled the comparison's costliest rows, is no longer tried.
    Method("full", "full", lr=1e-4, notes="all weights"),
    Method("lora", "lora", lr=1e-3, notes="PEFT LoRA r=8 on both towers' attention"),
    Method("projection", "projection", lr=1e-3, notes="both output projections"),
    # The reference points with dbprompt's calibrated temperature: is the gain the prompts'?
    Method("full-calibrated", "full", lr=1e-4, calibrate_temperature=True, notes="all weights, calibrated temperature"),
    Method("lora-calibrated", "lora", lr=1e-3, calibrate_temperature=True, notes="LoRA, calibrated temperature"),
)
COMPARED = tuple(m.name for m in COMPARED_METHODS)


def load_experiment(path: Path) -> tuple[list[Method], dict[str, str]]:
    """A sweep's candidates that still run, and why each of the others cannot (by name)."""
    data = json.loads(path.read_text())
    methods, retired = [], {}
    for entry in data["methods"]:
        try:
            methods.append(Method.from_json(entry))
        except RetiredMethod as exc:
            retired[entry["name"]] = (
                f"method {entry['name']!r} of {path.name} used {exc}, which dbprompt no longer has; its runs are "
                f"recorded there ({data.get('made_with', 'an earlier dbprompt')}) and in git history"
            )
    return methods, retired


def _registry() -> tuple[dict[str, Method], dict[str, str]]:
    methods, retired = {m.name: m for m in COMPARED_METHODS}, {}
    for path in sorted(EXPERIMENTS.glob("*.json")):
        runnable, gone = load_experiment(path)
        for name in [m.name for m in runnable] + list(gone):
            if name in methods or name in retired:
                raise ValueError(f"{path}: method {name!r} is defined twice")
        methods |= {m.name: m for m in runnable}
        retired |= gone
    return methods, retired


METHODS, RETIRED = _registry()
