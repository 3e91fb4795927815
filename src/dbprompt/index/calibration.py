"""What a weak text match is for one index: score statistics measured when it is built.

Scores are on a different scale for every backbone and prompt file: unrelated text-image pairs
score about 0.1-0.2 in OpenAI and LAION CLIPs, but a query that matches nothing scored 0.685 on
another backbone. So `dbprompt index` measures, through the index's own text prompts, the best
score over the whole collection of off-domain texts (NONSENSE, which should match nothing) and of
the database's own captions (which should), and keeps their quantiles in the manifest. A text
query whose best score is under the line between the two gets a hint that it matched nothing well.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np

from ..data import Record

if TYPE_CHECKING:  # torch: measured by a build; a server reads the line (`weak_below`) without it
    from ..model import PromptedCLIP
    from ..runtime import Runtime

# Texts no photo collection should answer well: gibberish, abstractions, paperwork and code.
NONSENSE = (
    "zxqv blorf wempt", "qwerty uiop asdf", "lorem ipsum dolor sit amet", "xkcd 927 zzzz", "aaaa bbbb cccc dddd",
    "glarb frimble snoot", "vrrk plonth quazzle", "mmmmmmmm", "asdfghjkl", "zzzz qqqq", "kjhg fdsa poiu",
    "the square root of minus one", "a theorem about prime numbers", "the second law of thermodynamics",
    "the meaning of irony", "an abstract notion of fairness", "the concept of next tuesday", "a feeling of deja vu",
    "quarterly tax invoice pdf", "terms and conditions of the lease agreement", "a spreadsheet of payroll deductions",
    "section 4 paragraph 2 of the contract", "the minutes of the board meeting", "an insurance claim form",
    "TCP handshake timeout error", "segmentation fault core dumped", "null pointer exception in java",
    "git merge conflict in the makefile", "sql select star from users", "a regular expression for email addresses",
    "the password reset link expired", "http 404 not found", "the kernel panicked at boot", "a deprecated api endpoint",
    "the tuesday after next", "how to pronounce worcestershire", "a synonym for ephemeral", "the plural of octopus",
    "an unfinished sentence about", "the opposite of nothing", "whatever it was yesterday", "the sound of one hand",
    "interest rates in the third quarter", "a mortgage amortization schedule", "the capital gains tax rate",
    "the etymology of the word salary", "a footnote in a legal brief", "the difference between affect and effect",
    "bibliography in chicago style", "an error code without a manual",
)
QUANTILES = (0.1, 0.5, 0.9)
CAPTION_QUERIES = 256
# Indexes built before the statistics were kept: the line tuned for OpenAI and LAION CLIPs, which
# never fires on backbones whose unrelated pairs score higher (rebuild the index to calibrate it).
LEGACY_WEAK_BELOW = 0.2


def caption_queries(model: PromptedCLIP, records: Sequence[Record], runtime: Runtime, n: int = CAPTION_QUERIES) -> np.ndarray | None:
    """Vectors of one caption each of up to n images picked at random (seeded): the real query distribution,
    modality gap included (None without captions). They tune an approximate index and calibrate the hint."""
    rng = np.random.default_rng(0)
    picks = rng.choice(len(records), min(n, len(records)), replace=False)
    captions = [records[i].captions[rng.integers(len(records[i].captions))] for i in picks if records[i].captions]
    if not captions:
        return None
    from ..pipeline import encode_texts

    return encode_texts(model, captions, runtime, batch_size=64).numpy()


def measure(model: PromptedCLIP, runtime: Runtime, chunks: Iterable[np.ndarray], captions: np.ndarray | None) -> dict[str, object]:
    """Quantiles of the best score over all vectors (`chunks`, in any order) of the NONSENSE texts and of `captions`."""
    from ..pipeline import encode_texts

    queries = [encode_texts(model, list(NONSENSE), runtime).numpy()]
    if captions is not None:
        queries.append(captions)
    stacked = np.concatenate(queries).astype(np.float32)
    best = np.full(len(stacked), -np.inf, dtype=np.float32)
    for chunk in chunks:
        best = np.maximum(best, (stacked @ np.asarray(chunk, dtype=np.float32).T).max(axis=1))
    stats: dict[str, object] = {"nonsense_best": _quantiles(best[: len(NONSENSE)]), "nonsense_queries": len(NONSENSE)}
    if captions is not None:
        stats |= {"caption_best": _quantiles(best[len(NONSENSE) :]), "caption_queries": len(captions)}
    return stats


def _quantiles(values: np.ndarray) -> dict[str, float]:
    return {f"q{round(q * 100)}": round(float(np.quantile(values, q)), 6) for q in QUANTILES}


def threshold(nonsense_q90: float, caption_q10: float | None) -> float:
    """The weak-match line: above 9 in 10 nonsense queries' best scores; with captions, halfway from there to
    the best scores of the weakest tenth of the database's own captions, so that those still pass."""
    if caption_q10 is None:
        return nonsense_q90
    return (nonsense_q90 + caption_q10) / 2


def weak_below(calibration: dict[str, object]) -> tuple[float, bool]:
    """(the line a text query's best score must reach, whether it was calibrated on this index): the manifest
    may come from anyone, so a statistic that is not a finite number leaves the legacy line."""
    nonsense = _stat(calibration, "nonsense_best", "q90")
    if nonsense is None:
        return LEGACY_WEAK_BELOW, False
    return round(threshold(nonsense, _stat(calibration, "caption_best", "q10")), 6), True


def _stat(calibration: dict[str, object], group: str, name: str) -> float | None:
    values = calibration.get(group)
    value = values.get(name) if isinstance(values, dict) else None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None
