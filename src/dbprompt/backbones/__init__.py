"""Backbone adapters: the token-level stages of a frozen CLIP that prompts need."""

from .base import PROMPT_ID, BackboneAdapter, LayerHook, UnsupportedPromptError
from .factory import RANDOM, load_backbone, load_named_backbone, shipped_weights
from .loading import WeightsUnavailableError

__all__ = [
    "PROMPT_ID",
    "RANDOM",
    "BackboneAdapter",
    "LayerHook",
    "UnsupportedPromptError",
    "WeightsUnavailableError",
    "load_backbone",
    "load_named_backbone",
    "shipped_weights",
]
