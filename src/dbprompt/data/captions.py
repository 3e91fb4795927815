"""Captions: taken from the metadata, or made by a template from tags, class folders or file names.

Many collections have no captions: a folder per class, a tag list per image, or only file
names. With a caption template ("a photo of {}") each image without a caption gets one, `{}`
filled with the first of these it has: its tags (a caption each, and one for them all), its class
folder, its file name's words.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from ..untrusted import brief
from .errors import BAD_METADATA, EMPTY_CAPTION, ItemError, Location, Reporter

# What a folder without metadata is searched for (by extension, case-insensitive).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".jfif", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".avif")
TEMPLATE_SLOT = "{}"
_WORD_BREAKS = re.compile(r"[\s_\-.+]+")


@dataclass(frozen=True)
class CaptionRule:
    """Where an image's captions come from: the `column` of its metadata row, else (with a
    `template`) its tags (the `tags` column: a list, or a comma-separated string), else its
    class folder, else its file name."""

    column: str
    template: str | None = None
    tags: str = "tags"

    def __post_init__(self) -> None:
        if self.template is not None and self.template.count(TEMPLATE_SLOT) != 1:
            raise ValueError(f"--caption-template must contain {TEMPLATE_SLOT} exactly once, e.g. 'a photo of {{}}'; got {self.template!r}")

    def row_captions(self, row: dict, path: Path, where: Location, reporter: Reporter) -> list[str]:
        """The captions of one metadata row; raises ItemError for a row with none to give."""
        value = row.get(self.column)
        if self.template is None or _given(value):
            if self.column not in row:
                hint = "" if self.template else " (for images without captions, see --caption-template)"
                raise ItemError(BAD_METADATA, f"missing column {self.column!r}{hint}")
            return caption_list(value, where, reporter)
        tags = tag_list(row.get(self.tags))
        if not tags:
            return [self.fill(words(path.stem))]
        # One caption a tag, so the image is found (and trained) under each; with several, their joint one too.
        return [self.fill(t) for t in tags] + ([self.fill(", ".join(tags))] if len(tags) > 1 else [])

    def row_tags(self, row: dict) -> tuple[str, ...]:
        """The row's tags, which an index keeps to filter searches by. Where its captions come from the caption
        column, a tags value of another shape (not a list of strings nor a string) is some other tool's and gives
        none: the row reads as it did before tags were kept. Where they make its captions, row_captions refused it."""
        try:
            return tuple(tag_list(row.get(self.tags)))
        except ItemError:
            return ()

    def fill(self, label: str) -> str:
        """The template with `label` in its slot (replaced literally: no format fields to abuse)."""
        if not label:
            raise ItemError(EMPTY_CAPTION, "no tags, class folder or words in the file name to fill the caption template")
        assert self.template is not None
        return self.template.replace(TEMPLATE_SLOT, label)


def _given(value: Any) -> bool:
    return value is not None and value != "" and value != []


def caption_list(value: Any, where: Location, reporter: Reporter) -> list[str]:
    """Validate a caption or list of captions; empty ones are reported one by one and dropped."""
    values = value if isinstance(value, list) else [value]
    if not values or not all(isinstance(v, str) for v in values):
        raise ItemError(BAD_METADATA, f"caption must be a string or a non-empty list of strings, got {brief(value)}")
    kept = []
    for i, caption in enumerate(values, 1):
        if caption.strip():
            kept.append(caption.strip())
        else:
            reporter.bad_at(where, EMPTY_CAPTION, f"caption {i} of {len(values)}" if len(values) > 1 else "")
    return kept


def tag_list(value: Any) -> list[str]:
    """Distinct tags in order, from a list or a comma-separated string; [] when there are none."""
    if value is None:
        return []
    if isinstance(value, str):
        value = value.split(",")
    if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
        raise ItemError(BAD_METADATA, f"tags must be a list of strings or a comma-separated string, got {brief(value)}")
    return list(dict.fromkeys(t.strip() for t in value if t.strip()))


def words(name: str) -> str:
    """The words of a file or folder name: `golden_retriever-003` -> `golden retriever` (numbers dropped)."""
    return " ".join(w for w in _WORD_BREAKS.split(name) if w and not w.isdigit())


def folder_images(root: Path, split_of: Any) -> Iterator[tuple[Path, str | None, str | None]]:
    """(path, split, class label) of every image file under `root`, in sorted order.

    Hidden entries are skipped and symlinked folders are not entered. A first-level folder
    that `split_of` names (train/, validation/, test/) gives the split; the folder holding the
    image gives its class, unless the image sits directly in the root or a split folder.
    """
    for folder, dirs, files in os.walk(root, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith(".") or not name.lower().endswith(IMAGE_EXTENSIONS):
                continue
            path = Path(folder) / name
            parts = path.relative_to(root).parts
            split = split_of(parts[0]) if len(parts) > 1 else None
            inner = parts[1:] if split else parts
            yield path, split, words(inner[-2]) if len(inner) > 1 else None
