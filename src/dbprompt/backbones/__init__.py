"""Backbone adapters: the token-level stages of a frozen CLIP that prompts need."""

from .base import PROMPT_ID, BackboneAdapter, LayerHook, UnsupportedPromptError
from .factory import RANDOM, load_backbone, load_named_backbone, shipped_weights
from .loading import WeightsUnavailableError
from .model_dirs import add_model_dir

__all__ = [
    "PROMPT_ID",
    "RANDOM",
    "BackboneAdapter",
    "LayerHook",
    "UnsupportedPromptError",
    "WeightsUnavailableError",
    "add_model_dir",
    "load_backbone",
    "load_named_backbone",
    "shipped_weights",
]
