"""Build a BackboneAdapter from what a user names: an open_clip model + pretrained tag, a local checkpoint
file, an open_clip directory or hub repo (`local-dir:`, `hf-hub:`), a Hugging Face CLIPModel or
SiglipModel (`hf:`), a model shipped with dbprompt, or an architecture with random weights.

Weights come from this machine first and from the network only when they are not here (see
`loading.fetch`); when they cannot be had, a WeightsUnavailableError says how to run offline.
"""

from __future__ import annotations

from pathlib import Path

import open_clip
import torch

from . import registry
from .base import BackboneAdapter
from .hf_loading import PREFIX as HF_PREFIX, RANDOM, check_own_weights, load_hf
from .loading import fetch
from .model_dirs import OWN, known_model, shipped_weights
from .openclip import OpenClipAdapter

HF_HUB, LOCAL_DIR = "hf-hub:", "local-dir:"

# Models shipped with dbprompt (MODEL_CONFIG_DIR) or an installed distribution (model_dirs): an open_clip
# config `NAME.json` (found by name like open_clip's own) and, when pre-trained weights ship too,
# `NAME.safetensors` beside it.
MODEL_CONFIG_DIR = OWN


def load_backbone(
    model: str, pretrained: str | None = None, *, device: str = "cpu", seed: int = 0, local_only: bool = False
) -> BackboneAdapter:
    """Load a frozen backbone in eval mode.

    `model`: an open_clip name, `hf-hub:org/repo`, `local-dir:DIR` (open_clip layout), `hf:DIR` or
    `hf:org/repo` (transformers CLIPModel / SiglipModel). `pretrained` for an open_clip name: a tag
    (e.g. "laion2b_s34b_b79k"), a checkpoint path, or None for the weights dbprompt ships (else
    random); for the prefixed forms the weights come with the model, so None (or the model's own
    name, which prompt files record, as for shipped weights); everywhere "random" gives the architecture with weights drawn from `seed` (the same
    seed, the same weights and fingerprint). `local_only`: never the network, only this machine.
    """
    if model.startswith(HF_PREFIX):
        return load_hf(model[len(HF_PREFIX) :], pretrained, device=device, seed=seed, local_only=local_only)
    if model.startswith((HF_HUB, LOCAL_DIR)):
        (model, label), tag = _schema_source(model, pretrained), None
    elif known_model(model):
        tag, label = _named_source(model, pretrained)
    else:
        raise ValueError(
            f"unknown model {model!r}: use an open_clip name (see `open_clip.list_models()`), 'hf-hub:org/repo' or "
            "'local-dir:DIR' (open_clip layout), 'hf:org/repo' or 'hf:DIR' (a transformers CLIPModel or SiglipModel), "
            "or a model shipped with dbprompt or an installed distribution (the dbprompt.models entry points)"
        )
    weights = label != RANDOM

    def create():
        if weights and model.startswith(HF_HUB):
            # open_clip builds random weights (with a logged warning) when the hub's fail; fetched first, they fail loudly.
            open_clip.pretrained.download_pretrained_from_hf(model[len(HF_HUB) :])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return open_clip.create_model_and_transforms(
                model, pretrained=tag, device=device, load_weights=weights, require_pretrained=weights
            )

    what = f"the weights of {model}" + (f" --pretrained {pretrained}" if pretrained not in (None, RANDOM) else "")
    net, _, preprocess = fetch(create, what, local_only=local_only)

    def tokenizer():
        # Some towers' tokenizers come from a hub, which tests never reach: fetched on first use, like the weights.
        return fetch(lambda: open_clip.get_tokenizer(model), f"the tokenizer of {model}", local_only=local_only)

    adapter = OpenClipAdapter(net, tokenizer=tokenizer, preprocess=preprocess, name=model, pretrained=label)
    adapter.eval()
    adapter.requires_grad_(False)
    return adapter


def _named_source(model: str, pretrained: str | None) -> tuple[str | None, str]:
    """(what open_clip loads, what the prompt file records) for an open_clip name."""
    shipped = shipped_weights(model)
    if pretrained in (None, model) and shipped is not None:
        return str(shipped), model
    if pretrained in (None, RANDOM):
        return None, RANDOM
    if Path(pretrained).suffix and ("/" in pretrained or "\\" in pretrained) and not Path(pretrained).exists():
        raise FileNotFoundError(f"checkpoint file not found: {pretrained}")
    if not Path(pretrained).is_file() and not open_clip.get_pretrained_cfg(model, pretrained):
        tags = open_clip.list_pretrained_tags_by_model(model)
        known = f"open_clip's tags for {model}: {', '.join(tags)}" if tags else f"open_clip has no tags for {model}"
        folder = f"; for a directory, --model local-dir:{pretrained} or hf:{pretrained}" if Path(pretrained).is_dir() else ""
        raise ValueError(f"--pretrained {pretrained}: neither a checkpoint file nor a known tag ({known}){folder}")
    return pretrained, pretrained


def _schema_source(model: str, pretrained: str | None) -> tuple[str, str]:
    """(model, recorded pretrained) for `hf-hub:` and `local-dir:`, whose weights come with the model: recorded
    as the model's own name, as shipped weights are."""
    if model.startswith(LOCAL_DIR):
        folder = Path(model[len(LOCAL_DIR) :]).expanduser().resolve()
        _check_open_clip_dir(folder, weights=pretrained != RANDOM)
        model = f"{LOCAL_DIR}{folder}"
    check_own_weights(model, pretrained)
    return model, RANDOM if pretrained == RANDOM else model


def _check_open_clip_dir(folder: Path, *, weights: bool) -> None:
    """What open_clip needs in a `local-dir:` (it would otherwise fall back to random weights with a logged warning)."""
    where = f"{LOCAL_DIR}{folder}"
    if not folder.is_dir():
        raise FileNotFoundError(f"{where}: no such directory")
    if not (folder / "open_clip_config.json").is_file():
        hint = f"; it holds a config.json, so it may be a Hugging Face model: try hf:{folder}" if (folder / "config.json").is_file() else ""
        raise FileNotFoundError(f"{where}: no open_clip_config.json (open_clip's layout){hint}")
    if weights and not any(next(folder.glob(f"*{ext}"), None) for ext in (".safetensors", ".bin", ".pth")):
        raise FileNotFoundError(f"{where}: no weights (e.g. open_clip_model.safetensors); give 'random' for random weights")


def load_named_backbone(model: str, pretrained: str | None, *, device: str = "cpu") -> BackboneAdapter:
    """`load_backbone` for what a user named, refusing to fall back to random weights silently.

    A route that names a local path (a directory, a checkpoint file) is remembered on this machine by
    the backbone's fingerprint, so files made with it load again without --model (`registry`).
    """
    own_weights = model.startswith((HF_PREFIX, HF_HUB, LOCAL_DIR)) or shipped_weights(model) is not None
    if pretrained is None and not own_weights:
        tags = open_clip.list_pretrained_tags_by_model(model) if known_model(model) else []
        hint = f" (open_clip has: {', '.join(tags[:4])})" if tags else ""
        raise ValueError(f"--model {model}: say which weights with --pretrained TAG{hint}, a checkpoint file, or 'random'")
    backbone = load_backbone(model, pretrained, device=device)
    registry.remember(backbone, pretrained)
    return backbone
