"""Bad-input handling: stop with a precise message, or skip and count, never drop silently."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

MISSING_IMAGE = "missing image"
EMPTY_FILE = "zero-byte file"
UNREADABLE_FILE = "unreadable file"
NOT_AN_IMAGE = "not an image"
TRUNCATED_IMAGE = "truncated or corrupt image"
EMPTY_CAPTION = "empty caption"
BAD_METADATA = "bad metadata"
UNKNOWN_SPLIT = "unknown split"
CONFLICTING_SPLIT = "conflicting split"
OUTSIDE_ROOT = "outside the database"
IMAGE_TOO_LARGE = "image too large"
DUPLICATE_KEY = "duplicate key"


class DataError(ValueError):
    """Bad input data. The message reads `<where>: <problem>[: <detail>]`.

    `problem` is one of the constants above, so callers can branch on the kind.
    """

    def __init__(self, where: str, problem: str, detail: str = "") -> None:
        self.where, self.problem, self.detail = where, problem, detail
        super().__init__(f"{where}: {problem}" + (f": {detail}" if detail else ""))


class ItemError(Exception):
    """A problem with one item, raised before the reader knows where the item sits in its file."""

    def __init__(self, problem: str, detail: str = "") -> None:
        super().__init__(problem, detail)
        self.problem, self.detail = problem, detail


def location(file: Path, line: int, unit: str = "line", name: str = "") -> str:
    """`file:line`, `file: images[i]` for an index into a Karpathy `images` list, `file: row i` for a
    parquet row (0-based, as pyarrow and pandas count), `file: NAME` for a tar shard's member, or the file alone."""
    if unit == "file":
        return str(file)
    if unit == "member":
        return f"{file}: {name}"
    if unit == "row":
        return f"{file}: row {line}"
    return f"{file}:{line}" if unit == "line" else f"{file}: images[{line}]"


@dataclass(frozen=True)
class Location:
    """Where a database names an item: a file and line, an index into a Karpathy list, a parquet row
    or a tar shard's member (`name`)."""

    file: Path
    line: int
    unit: str = "line"
    name: str = ""

    def __str__(self) -> str:
        return location(self.file, self.line, self.unit, self.name)


@dataclass(frozen=True)
class BadItem:
    """One skipped item. `line` is 1-based, except for Karpathy JSON where it is the image index."""

    file: Path
    line: int
    problem: str
    detail: str = ""
    unit: str = "line"
    name: str = ""

    @property
    def where(self) -> str:
        return location(self.file, self.line, self.unit, self.name)

    def __str__(self) -> str:
        return str(DataError(self.where, self.problem, self.detail))


@dataclass
class BadInputReport:
    """What `skip_bad=True` left out, so the user can see the cost of skipping."""

    items: list[BadItem] = field(default_factory=list)

    @property
    def counts(self) -> dict[str, int]:
        return dict(Counter(item.problem for item in self.items))

    def summary(self) -> str:
        if not self.items:
            return "no bad input"
        per_problem = ", ".join(f"{n} {problem}" for problem, n in sorted(self.counts.items()))
        return f"skipped {len(self.items)} bad item(s): {per_problem}"


class Reporter:
    """Either raises the first problem (strict) or records every problem in a report."""

    def __init__(self, skip_bad: bool, report: BadInputReport) -> None:
        self.skip_bad = skip_bad
        self.report = report

    def bad(self, file: Path, line: int, problem: str, detail: str = "", unit: str = "line", name: str = "") -> None:
        self.add(BadItem(file, line, problem, detail, unit, name))

    def bad_at(self, at: "Location", problem: str, detail: str = "") -> None:
        self.bad(at.file, at.line, problem, detail, at.unit, at.name)

    def add(self, item: BadItem) -> None:
        """Raise `item` as a DataError, or count it (one found elsewhere, e.g. by a Ray worker)."""
        if not self.skip_bad:
            raise DataError(item.where, item.problem, item.detail)
        self.report.items.append(item)
