"""Every call dbprompt makes into open_clip's, timm's, transformers' and huggingface_hub's private parts, in one place.

Upstream may rename or change these in any release. `check()` verifies each one is still there
with the arguments used here, and the tests run it, so an upgrade that breaks one fails loudly
with the name of the function instead of deep inside an encode.
"""

from __future__ import annotations

import inspect
import threading
from contextlib import contextmanager
from typing import Callable, Iterator

import torch
from torch import nn

# (owner, attribute, the parameters dbprompt passes; None for a value): what `check` verifies.
_EXPECTED: list[tuple[str, str, tuple[str, ...] | None]] = [
    ("open_clip.transformer.VisionTransformer", "_embeds", ("x",)),
    ("open_clip.transformer.VisionTransformer", "_pool", ("x",)),
    ("open_clip.transformer", "text_global_pool", ("x", "text", "pool_type", "eos_token_id")),
    ("timm.models.vision_transformer.VisionTransformer", "_pos_embed", ("x",)),
    ("huggingface_hub.constants", "HF_HUB_OFFLINE", None),
    # The layers' call convention (hidden states, then an additive mask) is what the HF block views rely on.
    ("transformers.models.clip.modeling_clip.CLIPEncoderLayer", "forward", ("hidden_states", "attention_mask")),
    ("transformers.models.siglip.modeling_siglip.SiglipEncoderLayer", "forward", ("hidden_states", "attention_mask")),
]


def _resolve(owner: str) -> object:
    module_name, _, attr = owner.rpartition(".")
    import importlib

    try:
        return importlib.import_module(owner)
    except ImportError:
        return getattr(importlib.import_module(module_name), attr)


def check() -> list[str]:
    """Problems with the upstream functions this module calls (empty when all are as expected)."""
    problems = []
    for owner, name, params in _EXPECTED:
        try:
            fn = getattr(_resolve(owner), name)
        except (ImportError, AttributeError):
            problems.append(f"{owner}.{name} no longer exists")
            continue
        if params is None:
            continue
        have = list(inspect.signature(fn).parameters)
        missing = [p for p in params if p not in have]
        if missing:
            problems.append(f"{owner}.{name} no longer takes {missing} (now {have})")
    return problems


def openclip_image_tokens(visual: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """open_clip ViT: patches + class token + positions + pre-norm, as its forward does before the blocks."""
    return visual._embeds(images)


def openclip_image_pool(visual: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """open_clip ViT: final norm and pooling (token, average or attentional) after the blocks."""
    pooled, _ = visual._pool(x)
    return pooled


def timm_image_tokens(trunk: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """timm ViT: patches, prefix tokens and positions, patch dropout and pre-norm."""
    x = trunk.patch_embed(images)
    x = trunk._pos_embed(x)
    x = trunk.patch_drop(x)
    return trunk.norm_pre(x)


def text_pool() -> Callable[..., torch.Tensor]:
    """open_clip's pooling of text tokens (argmax / eos / first / last), returning the pooled features."""
    from open_clip.transformer import text_global_pool

    def pool(x: torch.Tensor, ids: torch.Tensor, pool_type: str, eos_id: int | None) -> torch.Tensor:
        return text_global_pool(x, ids, pool_type, eos_token_id=eos_id)

    return pool


_offline_lock = threading.RLock()


@contextmanager
def hub_offline() -> Iterator[None]:
    """The Hugging Face hub in offline mode for the block, as HF_HUB_OFFLINE=1 sets it: only the local cache answers.

    open_clip's downloads take no `local_files_only`, so the switch is huggingface_hub's own module
    setting (read at every request by huggingface_hub and transformers). It is process-wide: a
    download in another thread meanwhile would be refused too, hence the lock among loaders.
    """
    from huggingface_hub import constants

    with _offline_lock:
        before = constants.HF_HUB_OFFLINE
        constants.HF_HUB_OFFLINE = True
        try:
            yield
        finally:
            constants.HF_HUB_OFFLINE = before
