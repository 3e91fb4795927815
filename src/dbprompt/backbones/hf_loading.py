"""Loading a transformers CLIPModel or SiglipModel (`--model hf:DIR` or `--model hf:org/repo`): weights, tokenizer, preprocessing.

A directory is read as it is. A hub id resolves to a snapshot in the Hugging Face cache (the
small files: config, tokenizer, preprocessing; the weights through `from_pretrained`), from the
cache first and the network only when needed (see `loading.fetch`). The tokenizer and image
processor come from the model's own files; a CLIP without tokenizer files gets the BPE that
open_clip ships (the same vocabulary), and a note says so.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import torch

from .hf import HFAdapter, Tokenize
from .loading import fetch

PREFIX = "hf:"
RANDOM = "random"
# What a hub snapshot needs besides the weights (which `from_pretrained` picks: safetensors, shards, .bin).
_SMALL_FILES = ["*.json", "*.txt", "*.model"]
_TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "spiece.model")
_CLIP_BPE_VOCAB = 49408
_CLIP_BPE_EOS = (49407, 2)  # the end token; 2 in configs from before transformers PR 24773

log = logging.getLogger(__name__)


def load_hf(
    source: str, pretrained: str | None = None, *, device: str = "cpu", seed: int = 0, local_only: bool = False
) -> HFAdapter:
    """A frozen HFAdapter in eval mode from a directory or a hub id (`source`, without the `hf:` prefix).

    `pretrained`: None (or the model's name, as prompt files record it) for the model's own
    weights; for a hub id also a revision (branch, tag or commit); or "random" for the
    architecture with weights drawn from `seed`. `local_only`: never the network.
    """
    folder, revision = Path(source).expanduser(), None
    if folder.is_dir():
        folder, name = folder.resolve(), f"{PREFIX}{folder.resolve()}"
        check_own_weights(name, pretrained)
        model = _model(folder, folder, None, pretrained == RANDOM, seed)
    elif source.startswith(("/", ".", "~")) or source.count("/") > 1:
        raise FileNotFoundError(f"{PREFIX}{source}: no such directory (a hub id reads org/name)")
    else:
        name = f"{PREFIX}{source}"
        revision = None if pretrained in (None, RANDOM, name) else pretrained
        what = f"the weights of {name}" + (f" at revision {revision}" if revision else "")

        def from_hub() -> tuple[Path, torch.nn.Module]:
            from huggingface_hub import constants, snapshot_download
            from huggingface_hub.errors import LocalEntryNotFoundError

            snapshot = Path(snapshot_download(source, revision=revision, allow_patterns=_SMALL_FILES))
            try:
                return snapshot, _model(source, snapshot, snapshot.name, pretrained == RANDOM, seed)
            except OSError as exc:
                if not constants.is_offline_mode():
                    raise
                # Offline, transformers says a weights file is missing, not that it looked only in the cache.
                raise LocalEntryNotFoundError(str(exc)) from exc

        folder, model = fetch(from_hub, what, local_only=local_only)
    label = RANDOM if pretrained == RANDOM else revision or name  # own weights: recorded as the model's name
    family = model.config.model_type
    tokenize, prefix = _tokenizer(folder, family, model.config.text_config, name)
    adapter = HFAdapter(model, tokenize, prefix, _transform(folder, family, model.config.vision_config, name), name, label)
    return adapter.to(device).eval().requires_grad_(False)


def check_own_weights(model: str, pretrained: str | None) -> None:
    """A model that comes with its weights takes no --pretrained: only its own name (what prompt files record) or 'random'."""
    if pretrained not in (None, model, RANDOM):
        raise ValueError(
            f"--pretrained {pretrained} means nothing for {model}: its weights come with it. "
            "Leave --pretrained out, or give 'random' for the architecture with random weights"
        )


def _model(source: str | Path, folder: Path, revision: str | None, random: bool, seed: int) -> torch.nn.Module:
    """The CLIPModel or SiglipModel `folder/config.json` describes: from `source`'s weights, or random from `seed`."""
    from transformers import AutoConfig, CLIPModel, SiglipModel

    config = AutoConfig.from_pretrained(folder)
    classes = {"clip": CLIPModel, "siglip": SiglipModel}
    if config.model_type not in classes:
        raise ValueError(
            f"{PREFIX}{source} is a {config.model_type!r} model; dbprompt opens transformers' CLIPModel and "
            "SiglipModel (model_type 'clip' or 'siglip')"
        )
    if config.model_type == "siglip" and not config.vision_config.vision_use_head:
        raise ValueError(f"{PREFIX}{source}: a SigLIP without its attention-pooling head gives no image features")
    cls = classes[config.model_type]
    if not random:
        from transformers.utils import logging as hf_logging

        bar = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # its carriage returns would litter logs; dbprompt shows its own progress
        try:
            return cls.from_pretrained(source, revision=revision, dtype=torch.float32)
        finally:
            if bar:
                hf_logging.enable_progress_bar()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return cls(config)


class _HFTokens:
    """The model's own tokenizer, to max length; with `zero_padding`, ids after the end are 0 (as open_clip pads)."""

    def __init__(self, tokenizer, zero_padding: bool):
        self.tokenizer = tokenizer
        self.zero_padding = zero_padding

    def __call__(self, texts: Sequence[str], length: int) -> torch.Tensor:
        out = self.tokenizer(list(texts), padding="max_length", truncation=True, max_length=length, return_tensors="pt")
        ids = out["input_ids"]
        return ids.masked_fill(out["attention_mask"] == 0, 0) if self.zero_padding else ids


def _tokenizer(folder: Path, family: str, text_config, name: str) -> tuple[Tokenize, int]:
    """(tokenize, positions before the caption) from the model's tokenizer files, or open_clip's BPE for a CLIP without any."""
    if any((folder / f).is_file() for f in _TOKENIZER_FILES):
        from transformers import AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(folder)
        except ImportError as exc:  # a missing backend: a fix for the user, not a bug to trace
            reason = str(exc).strip().split(". ")[0]
            raise ValueError(
                f"{name}: its tokenizer cannot be loaded: {reason}. Install it (SigLIP's spiece.model: pip install sentencepiece)"
            ) from None
        first = tokenizer(["a"])["input_ids"][0]
        bos = tokenizer.bos_token_id
        return _HFTokens(tokenizer, zero_padding=family == "clip"), int(bos is not None and first[0] == bos)
    files = ", ".join(_TOKENIZER_FILES)
    if family != "clip":
        raise FileNotFoundError(
            f"{name}: no tokenizer files ({files}) in {folder}. SigLIP's tokenizer is not CLIP's BPE, so none can be "
            "stood in: copy the model's tokenizer files (e.g. spiece.model, tokenizer_config.json) into the directory"
        )
    if text_config.vocab_size != _CLIP_BPE_VOCAB or text_config.eos_token_id not in _CLIP_BPE_EOS:
        raise FileNotFoundError(
            f"{name}: no tokenizer files ({files}) in {folder}, and its vocabulary ({text_config.vocab_size} tokens, "
            f"end token {text_config.eos_token_id}) is not CLIP's BPE: copy the model's tokenizer files into the directory"
        )
    from open_clip.tokenizer import SimpleTokenizer

    log.warning("note: %s has no tokenizer files; using the CLIP BPE tokenizer open_clip ships (the same vocabulary)", name)
    bpe = SimpleTokenizer()
    return (lambda texts, length: bpe(list(texts), context_length=length)), 1


class _Pixels:
    """PIL image -> [3, H, W] through the model's image processor (a plain object, so decoding workers can pickle it)."""

    def __init__(self, processor):
        self.processor = processor

    def __call__(self, image) -> torch.Tensor:
        return self.processor(images=image, return_tensors="pt")["pixel_values"][0]


def _transform(folder: Path, family: str, vision_config, name: str) -> _Pixels:
    """The model's own preprocessing (preprocessor_config.json), else its family's standard one at its image size."""
    from transformers import AutoImageProcessor, CLIPImageProcessor, SiglipImageProcessor

    if (folder / "preprocessor_config.json").is_file():
        return _Pixels(AutoImageProcessor.from_pretrained(folder))
    size = vision_config.image_size
    shown = {"clip": "CLIP", "siglip": "SigLIP"}[family]
    log.warning("note: %s has no preprocessor_config.json; using %s's standard preprocessing at %spx", name, shown, size)
    if family == "clip":
        return _Pixels(CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size}))
    return _Pixels(SiglipImageProcessor(size={"height": size, "width": size}))
