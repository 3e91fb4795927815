"""Prompt methods: they know the backbone's token interface, nothing of training or files.

Only the config is imported here: the CLI builds its flags from it without waiting for torch.
"""

from .config import PromptConfig

__all__ = ["PromptConfig"]
