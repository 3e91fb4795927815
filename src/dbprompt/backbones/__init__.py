"""Backbone adapters: the token-level stages of a frozen CLIP that prompts need."""

from .base import PROMPT_ID, BackboneAdapter, LayerHook, UnsupportedPromptError
from .factory import RANDOM, load_backbone, load_named_backbone, shipped_weights

__all__ = [
    "PROMPT_ID",
    "RANDOM",
    "BackboneAdapter",
    "LayerHook",
    "UnsupportedPromptError",
    "load_backbone",
    "load_named_backbone",
    "shipped_weights",
]
