"""Prompt modules: they know the backbone's token interface, nothing of training or files."""

from .config import TRAIN_DEFAULTS, PromptConfig
from .coupling import CoupledPromptTokens
from .tokens import PromptTokens
from .vocabulary import TokenOffsets, frequent_tokens

__all__ = ["TRAIN_DEFAULTS", "CoupledPromptTokens", "PromptConfig", "PromptTokens", "TokenOffsets", "frequent_tokens"]
