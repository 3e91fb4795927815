"""dbprompt: adapt a frozen CLIP to one image database with textual and visual prompts."""

__version__ = "0.1.0"
