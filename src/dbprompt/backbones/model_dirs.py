"""Where models loadable by name live: dbprompt's own `assets/models`, and the directories installed
distributions add through the `dbprompt.models` entry-point group.

dbprompt never imports the packages that use it (the lab depends on dbprompt, not the reverse), so a
distribution that ships models names a package of its own in that group; that package's directory holds
open_clip configs `NAME.json` and, when pre-trained weights ship, `NAME.safetensors` beside them. The
group is read once, on first use, and each directory is added to open_clip's registry. What they hold
counts as shipped (like dbprompt's own): its weights load with no --pretrained, and a prompt file
recording one loads it; an installed distribution is code the user chose to run.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
from pathlib import Path

import open_clip

GROUP = "dbprompt.models"
OWN = Path(__file__).resolve().parent.parent / "assets" / "models"
open_clip.add_model_config(OWN)

log = logging.getLogger(__name__)


# Directories of installed distributions (read from the entry points once) and of `add_model_dir`.
_dirs: list[Path] = []
_read = False


def model_dirs() -> tuple[Path, ...]:
    """dbprompt's directory, then each installed distribution's, registered with open_clip (the entry points
    are read on the first call only)."""
    global _read
    if not _read:
        _read = True
        for entry in importlib.metadata.entry_points(group=GROUP):
            try:
                folder = Path(entry.load().__file__).resolve().parent
            except Exception as exc:  # noqa: BLE001 - a broken plugin must not stop dbprompt: its models are just not there
                log.warning("the %s entry point %r could not be loaded (%s); its models are not available", GROUP, entry.value, exc)
                continue
            _add(folder, f"the {GROUP} entry point {entry.value!r}")
    return (OWN, *_dirs)


def add_model_dir(folder: str | Path) -> None:
    """Register another directory of models, as an entry point does (for code run from a source checkout,
    where no entry point is installed)."""
    model_dirs()
    _add(Path(folder).resolve(), str(folder))


def _add(folder: Path, source: str) -> None:
    """Add `folder` to the directories and open_clip's registry, unless it is there already or one of its
    configs would replace another model's of the same name."""
    if folder == OWN or folder in _dirs:
        return
    clashes = sorted(
        p.stem for p in folder.glob("*.json")
        if p.stem in open_clip.list_models() and open_clip.get_model_config(p.stem) != json.loads(p.read_text())
    )
    if clashes:
        log.warning("%s: %s would replace models of the same name; its directory %s is not used", source, ", ".join(clashes), folder)
        return
    open_clip.add_model_config(folder)
    _dirs.append(folder)


def known_model(model: str) -> bool:
    """Whether `model` names an open_clip architecture, one of dbprompt's, or one an installed distribution ships."""
    model_dirs()
    return model in open_clip.list_models()


def shipped_config(model: str) -> Path | None:
    """The config of a model shipped with dbprompt or an installed distribution, or None."""
    return next((d / f"{model}.json" for d in model_dirs() if (d / f"{model}.json").is_file()), None)


def shipped_weights(model: str) -> Path | None:
    """The weights beside a shipped model's config, when they ship too."""
    config = shipped_config(model)
    weights = config.with_suffix(".safetensors") if config else None
    return weights if weights is not None and weights.exists() else None
