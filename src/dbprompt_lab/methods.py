"""Tuning methods compared like for like: each only decides what in a PromptedCLIP is trainable.

Prompts, full fine-tuning, LoRA and projection-only all then go through the same Trainer and
the same evaluation, so a comparison differs in the method alone. The methods of the comparison
are defined here; the candidates of past sweeps are data, one JSON file per sweep in
`experiments/` with the commands that ran it, and are looked up by name the same way.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from safetensors.torch import save as st_save
from torch import nn

from dbprompt.backbones.base import BackboneAdapter
from dbprompt.model import PromptedCLIP
from dbprompt.prompts.config import PromptConfig
from dbprompt.training.config import TrainConfig

EXPERIMENTS = Path(__file__).resolve().parent / "experiments"


@dataclass(frozen=True)
class Method:
    name: str
    # What is trained: "none", "prompts", "full", "lora" or "projection".
    tune: str
    prompts: PromptConfig = PromptConfig.none()
    lr: float = 1e-3
    # Further learning rates tried; validation picks one (per database, seed and size).
    other_lrs: tuple[float, ...] = ()
    lora_rank: int = 8
    # TrainConfig.anchor weights tried; with several, validation picks one, as for learning rates.
    anchors: tuple[float, ...] = (0.0,)
    # TrainConfig.calibrate_temperature. Off for the reference points, which train as their
    # literature does (at the backbone's temperature; full fine-tuning also learns it).
    calibrate_temperature: bool = False
    # TrainConfig.image_backward: the fraction of a step's images that backpropagate into the tower.
    image_backward: float = 1.0
    notes: str = field(default="", compare=False)

    @classmethod
    def from_json(cls, data: dict) -> "Method":
        data = dict(data)
        # What an experiment file does not name is off (the defaults of its time had neither).
        prompts = PromptConfig(**({"vocab": 0, "visual_adapter": 0, "visual_readout": 0} | data.pop("prompts", {"text_len": 0, "visual_len": 0})))
        for name in ("other_lrs", "anchors"):
            if name in data:
                data[name] = tuple(data[name])
        return cls(prompts=prompts, **data)


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


# The single-modality reference points as the literature runs them: shallow, ungated.
_LITERATURE = PromptConfig(text_len=8, text_depth=1, visual_len=8, visual_depth=1, gate=False, vocab=0, visual_adapter=0)

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


def load_experiment(path: Path) -> list[Method]:
    data = json.loads(path.read_text())
    return [Method.from_json(m) for m in data["methods"]]


def _registry() -> dict[str, Method]:
    methods = {m.name: m for m in COMPARED_METHODS}
    for path in sorted(EXPERIMENTS.glob("*.json")):
        for method in load_experiment(path):
            if method.name in methods:
                raise ValueError(f"{path}: method {method.name!r} is defined twice")
            methods[method.name] = method
    return methods


METHODS: dict[str, Method] = _registry()
