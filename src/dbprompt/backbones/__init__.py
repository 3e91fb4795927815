"""Backbone adapters: the token-level stages of a frozen CLIP that prompts need."""

from .base import PROMPT_ID, BackboneAdapter, LayerHook, UnsupportedPromptError
from .factory import RANDOM, load_backbone, register_local_model

__all__ = [
    "PROMPT_ID",
    "RANDOM",
    "BackboneAdapter",
    "LayerHook",
    "UnsupportedPromptError",
    "load_backbone",
    "register_local_model",
]
