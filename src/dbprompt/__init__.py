"""dbprompt: adapt a frozen CLIP to one image database with textual and visual prompts, then search it.

The Python API (`train`, `evaluate`, `build_index`, `open_index`, `PromptedCLIP`, the option
dataclasses) is imported on first use, so `dbprompt --help` does not wait for torch.
"""

from .lazy import lazy_exports

__version__ = "0.3.0"

__getattr__, __dir__ = lazy_exports(
    globals(),
    {
        "train": "dbprompt.api",
        "evaluate": "dbprompt.api",
        "build_index": "dbprompt.api",
        "open_index": "dbprompt.api",
        "TrainReport": "dbprompt.api",
        "EvalReport": "dbprompt.evaluation",
        "Searcher": "dbprompt.api",
        "PromptedCLIP": "dbprompt.model",
        "PromptConfig": "dbprompt.prompts.config",
        "TrainConfig": "dbprompt.training.config",
        "SplitConfig": "dbprompt.data.splits",
        "ReadOptions": "dbprompt.data.database",
        "Runtime": "dbprompt.runtime",
        "load_backbone": "dbprompt.backbones.factory",
        "load_database": "dbprompt.data.database",
    },
)
