"""Build a BackboneAdapter from what a user names: an open_clip model + pretrained tag,
a local checkpoint file, a model shipped with dbprompt, or an architecture with random weights."""

from __future__ import annotations

from pathlib import Path

import open_clip
import torch

from .openclip import OpenClipAdapter

RANDOM = "random"

# Models shipped with dbprompt: an open_clip config `NAME.json` (found by name like open_clip's
# own) and, when pre-trained weights ship too, `NAME.safetensors` beside it.
MODEL_CONFIG_DIR = Path(__file__).resolve().parent.parent / "assets" / "models"
open_clip.add_model_config(MODEL_CONFIG_DIR)


def shipped_weights(model: str) -> Path | None:
    path = MODEL_CONFIG_DIR / f"{model}.safetensors"
    return path if path.exists() else None


def load_backbone(
    model: str, pretrained: str | None = None, *, device: str = "cpu", seed: int = 0
) -> OpenClipAdapter:
    """Load a frozen backbone in eval mode.

    `pretrained` is an open_clip tag (e.g. "laion2b_s34b_b79k", downloaded on first use),
    a local checkpoint path, or "random" for the architecture with weights drawn from
    `seed` (the same seed always gives the same weights and fingerprint). None means the
    weights dbprompt ships for the model, else random.
    """
    known = model.startswith(("hf-hub:", "local-dir:")) or model in open_clip.list_models()
    if not known:
        raise ValueError(
            f"unknown model {model!r}: use an open_clip name (see `open_clip.list_models()`), "
            "an 'hf-hub:org/repo' id, or a model shipped with dbprompt"
        )
    shipped = shipped_weights(model)
    if pretrained in (None, model) and shipped is not None:
        tag, label = str(shipped), model
    else:
        tag = None if pretrained in (None, RANDOM) else pretrained
        label = tag or RANDOM
        if tag is not None and Path(tag).suffix and ("/" in tag or "\\" in tag) and not Path(tag).exists():
            raise FileNotFoundError(f"checkpoint file not found: {tag}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net, _, preprocess = open_clip.create_model_and_transforms(model, pretrained=tag, device=device)
    adapter = OpenClipAdapter(
        net,
        tokenizer=lambda: open_clip.get_tokenizer(model),
        preprocess=preprocess,
        name=model,
        pretrained=label,
    )
    adapter.eval()
    adapter.requires_grad_(False)
    return adapter


def load_named_backbone(model: str, pretrained: str | None, *, device: str = "cpu") -> OpenClipAdapter:
    """`load_backbone` for what a user named, refusing to fall back to random weights silently."""
    if pretrained is None and shipped_weights(model) is None:
        tags = open_clip.list_pretrained_tags_by_model(model) if model in open_clip.list_models() else []
        hint = f" (open_clip has: {', '.join(tags[:4])})" if tags else ""
        raise ValueError(f"--model {model}: say which weights with --pretrained TAG{hint}, a checkpoint file, or 'random'")
    return load_backbone(model, pretrained, device=device)
