"""Build a BackboneAdapter from what a user names: an open_clip model + pretrained tag,
a local checkpoint file, a model shipped with dbprompt, or an architecture with random weights."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import open_clip
import torch

from .base import BackboneAdapter
from .openclip import OpenClipAdapter

# Models that ship inside the package: name -> loader(device) returning an adapter.
_LOCAL_MODELS: dict[str, Callable[[str], BackboneAdapter]] = {}

RANDOM = "random"

# open_clip configs shipped with dbprompt (e.g. the tiny test model); found by name like open_clip's own.
MODEL_CONFIG_DIR = Path(__file__).resolve().parent.parent / "assets" / "models"
open_clip.add_model_config(MODEL_CONFIG_DIR)


def register_local_model(name: str, loader: Callable[[str], BackboneAdapter]) -> None:
    _LOCAL_MODELS[name] = loader


def load_backbone(
    model: str, pretrained: str | None = None, *, device: str = "cpu", seed: int = 0
) -> BackboneAdapter:
    """Load a frozen backbone in eval mode.

    `pretrained` is an open_clip tag (e.g. "laion2b_s34b_b79k", downloaded on first use),
    a local checkpoint path, or None / "random" for the architecture with weights drawn
    from `seed` (the same seed always gives the same weights and fingerprint).
    """
    if model in _LOCAL_MODELS:
        if pretrained not in (None, model):
            raise ValueError(f"model {model!r} ships with its own weights; drop --pretrained {pretrained!r}")
        adapter = _LOCAL_MODELS[model](device)
    else:
        adapter = _load_open_clip(model, pretrained, device=device, seed=seed)
    adapter.eval()
    adapter.requires_grad_(False)
    return adapter


def _load_open_clip(model: str, pretrained: str | None, *, device: str, seed: int) -> OpenClipAdapter:
    known = model.startswith(("hf-hub:", "local-dir:")) or model in open_clip.list_models()
    if not known:
        raise ValueError(
            f"unknown model {model!r}: use an open_clip name (see `open_clip.list_models()`), "
            "an 'hf-hub:org/repo' id, or a model shipped with dbprompt"
        )
    tag = None if pretrained in (None, RANDOM) else pretrained
    if tag is not None and Path(tag).suffix and not Path(tag).exists() and ("/" in tag or "\\" in tag):
        raise FileNotFoundError(f"checkpoint file not found: {tag}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net, _, preprocess = open_clip.create_model_and_transforms(model, pretrained=tag, device=device)
    return OpenClipAdapter(
        net,
        tokenizer=lambda: open_clip.get_tokenizer(model),
        preprocess=preprocess,
        name=model,
        pretrained=tag or RANDOM,
    )
