"""Prompt modules: they know the backbone's token interface, nothing of training or files."""

from .config import PromptConfig

__all__ = ["PromptConfig"]
