"""The report's figures as PNG bytes: matplotlib's object API on the Agg canvas, no global pyplot state."""

from __future__ import annotations

import io
from typing import Mapping, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, NullFormatter, ScalarFormatter

DIRECTIONS = {"t2i": "text → image", "i2t": "image → text"}
# Zero-shot grey, then one colour per prompt file: the same method has the same colour in every figure.
COLOURS = ("#7f7f7f", "#1f77b4", "#d62728", "#2ca02c", "#9467bd")


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    FigureCanvasAgg(figure).print_png(buffer)
    return buffer.getvalue()


def recall_curves(
    rows: Mapping[str, Mapping[str, float]], ks: Sequence[int], galleries: Mapping[str, int], prefix: str = "clip_benchmark"
) -> bytes:
    """R@K against K, one panel per direction, one line per method; K stops at the direction's gallery size."""
    figure = Figure(figsize=(9, 3.6), layout="constrained")
    axes = figure.subplots(1, 2, sharey=True)
    for ax, (direction, title) in zip(axes, DIRECTIONS.items()):
        shown = [k for k in ks if k <= galleries[direction]]
        for (name, metrics), colour in zip(rows.items(), COLOURS):
            ax.plot(shown, [metrics[f"{prefix}/{direction}_R@{k}"] for k in shown], label=name, color=colour, linewidth=2)
        ax.set_xscale("log")
        ax.set_xticks([k for k in (1, 2, 5, 10, 20, 50, 100) if k <= max(shown)])
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_title(f"{title} (gallery of {galleries[direction]:,})")
        ax.set_xlabel("K")
        ax.set_ylim(0, 101)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("recall@K (%)")
    axes[0].legend(loc="lower right")
    return _png(figure)


def validation_curve(history: Sequence[Mapping[str, float | None]], best_epoch: int | None) -> bytes:
    """Validation R@1 (and mAP, where captions repeat) per epoch (0 = before training) with the kept epoch marked,
    and the training loss beside it."""
    figure = Figure(figsize=(9, 3.4), layout="constrained")
    left, right = figure.subplots(1, 2)
    epochs = [h["epoch"] for h in history]
    lines = [("clip_benchmark/t2i_R@1", "text → image R@1", COLOURS[1]), ("clip_benchmark/i2t_R@1", "image → text R@1", COLOURS[2])]
    if all("label/t2i_mAP" in h for h in history):  # captions repeat: the epochs were chosen by mAP
        lines.insert(0, ("label/t2i_mAP", "text → image mAP", COLOURS[4]))
    for key, label, colour in lines:
        left.plot(epochs, [h.get(key) for h in history], marker="o", label=label, color=colour)
    if best_epoch is not None:
        left.axvline(best_epoch, color="#444", linestyle="--", linewidth=1, label=f"kept: epoch {best_epoch}")
    left.set_title("validation")
    left.set_xlabel("epoch (0 = before training)")
    left.set_ylabel("%")
    left.legend(loc="best")
    left.grid(True, alpha=0.3)
    trained = [(h["epoch"], h["train_loss"]) for h in history if h.get("train_loss") is not None]
    right.plot([e for e, _ in trained], [v for _, v in trained], marker="o", color=COLOURS[3])
    right.set_title("training loss")
    right.set_xlabel("epoch")
    right.grid(True, alpha=0.3)
    for ax in (left, right):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return _png(figure)
