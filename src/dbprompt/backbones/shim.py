"""Every call dbprompt makes into open_clip's and timm's private functions, in one place.

Upstream may rename or change these in any release. `check()` verifies each one is still there
with the arguments used here, and the tests run it, so an upgrade that breaks one fails loudly
with the name of the function instead of deep inside an encode.
"""

from __future__ import annotations

import inspect
from typing import Callable

import torch
from torch import nn

# (owner, attribute, the parameters dbprompt passes): what `check` verifies.
_EXPECTED: list[tuple[str, str, tuple[str, ...]]] = [
    ("open_clip.transformer.VisionTransformer", "_embeds", ("x",)),
    ("open_clip.transformer.VisionTransformer", "_pool", ("x",)),
    ("open_clip.transformer", "text_global_pool", ("x", "text", "pool_type", "eos_token_id")),
    ("timm.models.vision_transformer.VisionTransformer", "_pos_embed", ("x",)),
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
