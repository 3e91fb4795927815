"""Prompt modules: they know the backbone's token interface, nothing of training or files."""

from .config import PromptConfig
from .tokens import PromptTokens

__all__ = ["PromptConfig", "PromptTokens"]
