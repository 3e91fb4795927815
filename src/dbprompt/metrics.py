"""Text<->image retrieval metrics for databases with several captions per image.

Two definitions are in common use and give different numbers on the same
embeddings, so both are reported, under key prefixes that say which is which:

``clip_benchmark/``
    Every caption is a text->image query whose single positive is its image.
    Every image is an image->text query whose positives are all of its captions;
    it is a hit at k when ANY of them is in the top k.

``open_clip/``
    As ``get_clip_metrics`` in open_clip's training code: 1:1 pairs, each image
    paired with its FIRST caption (lowest text index), so N images and N texts.

Rank (1-based), identical for both definitions::

    rank = 1 + #{negative candidates whose score >= the best positive's score}

Ties are broken against the query (pessimistic), so a degenerate model with
constant embeddings cannot score well; other positives of the same query never
count against it. Without ties this equals the position of the best positive in
a descending sort, which is what open_clip's argsort-based code measures.

Reported per direction (``t2i``, ``i2t``): ``R@k`` = percentage (0-100) of
queries with rank <= k; ``mean_rank``; ``median_rank`` = floor of the median
rank, open_clip's convention (it matters only for an even number of queries).

Scores are float32 inner products of the embeddings as given (the caller
L2-normalises); search is exact and done in chunks of queries, so the full
score matrix is never held in memory.
"""

from collections.abc import Sequence

import numpy as np
import torch

from .data.records import text_key

# The K of the tables; a report's recall@K curves have every K up to 100 (each stops at its gallery's size).
TABLE_KS = (1, 5, 10)
CURVE_KS = tuple(range(1, 101))
DEFAULT_TABLE_KEYS: tuple[str, ...] = (
    "clip_benchmark/t2i_R@1",
    "clip_benchmark/t2i_R@5",
    "clip_benchmark/t2i_R@10",
    "clip_benchmark/i2t_R@1",
    "clip_benchmark/i2t_R@5",
    "clip_benchmark/i2t_R@10",
)


def retrieval_metrics(
    text_emb: np.ndarray | torch.Tensor,
    image_emb: np.ndarray | torch.Tensor,
    text_to_image: np.ndarray | Sequence[int],
    ks: Sequence[int] = (1, 5, 10),
    *,
    distractors: np.ndarray | torch.Tensor | None = None,
    chunk_size: int = 256,
) -> dict[str, float]:
    """Recall@k and median/mean rank under both the CLIP_benchmark and open_clip definitions.

    ``text_emb`` is [T, D], ``image_emb`` is [I, D], ``text_to_image[t]`` is the
    index of caption t's image. ``distractors`` ([J, D]) are uncaptioned images
    that text->image queries must also rank against, so a small query set can be
    scored in a gallery as large as the one search will use. ``chunk_size`` is the
    number of queries scored at once (peak memory is about ``chunk_size * max(T, I + J)``
    scores). Raises ValueError on inconsistent inputs.
    """
    texts, images, labels = _validated(text_emb, image_emb, text_to_image, ks, chunk_size)
    image_ids = torch.arange(len(images), device=images.device)
    gallery = images
    if distractors is not None and len(distractors):
        extra = torch.as_tensor(distractors).detach().to(device=images.device, dtype=torch.float32)
        if extra.ndim != 2 or extra.shape[1] != images.shape[1] or not torch.isfinite(extra).all():
            raise ValueError(f"distractors must be finite [J, {images.shape[1]}], got shape {tuple(extra.shape)}")
        gallery = torch.cat([images, extra])
    # Distractors' ids run past the captioned images', so they are never any caption's positive.
    gallery_ids = torch.arange(len(gallery), device=images.device)
    # np.unique returns the index of each value's first occurrence; every image occurs.
    first_caption = torch.as_tensor(
        np.unique(labels.cpu().numpy(), return_index=True)[1], device=texts.device
    )
    first_texts = texts[first_caption]

    ranks = {
        "clip_benchmark/t2i": _best_positive_ranks(texts, labels, gallery, gallery_ids, chunk_size),
        "clip_benchmark/i2t": _best_positive_ranks(images, image_ids, texts, labels, chunk_size),
        "open_clip/t2i": _best_positive_ranks(first_texts, image_ids, gallery, gallery_ids, chunk_size),
        "open_clip/i2t": _best_positive_ranks(images, image_ids, first_texts, image_ids, chunk_size),
    }
    metrics: dict[str, float] = {}
    for prefix, r in ranks.items():
        for k in ks:
            metrics[f"{prefix}_R@{k}"] = 100.0 * float(np.mean(r <= k))
        metrics[f"{prefix}_median_rank"] = float(np.floor(np.median(r)))
        metrics[f"{prefix}_mean_rank"] = float(np.mean(r))
    return metrics


# Label-level metrics (`label_metrics`): every image sharing a query's text is relevant to it.
LABEL_K = 10
LABEL_KEYS = ("label/t2i_mAP", "label/t2i_mAP@R", f"label/t2i_P@{LABEL_K}")
# Where at least this share (%) of distinct texts belongs to several images, the texts are labels (class
# folders, tags): validation picks epochs by mAP, tables mark R@K, training spreads targets over them.
LABELS_SHARE = 50.0


def label_metrics(
    text_emb: np.ndarray | torch.Tensor,
    image_emb: np.ndarray | torch.Tensor,
    texts: Sequence[str],
    image_captions: Sequence[Sequence[str]],
) -> dict[str, float]:
    """mAP, MAP@R (Musgrave et al. 2020) and precision@10, in %, over the distinct texts of `texts` (each
    queried by its first caption's features), where an image of the gallery `image_emb` is relevant to a
    text when any of its `image_captions` is that text (after case and whitespace normalisation): what class
    folders, tags and repeated captions are searched for. Ties rank irrelevant images first.

    Also `label/shared`: the percentage of queries with more than one relevant image (0: relevance is the
    1:1 pairs R@K measures, and these numbers add nothing).
    """
    queries = torch.as_tensor(text_emb).detach().float()
    gallery = torch.as_tensor(image_emb).detach().float()
    if len(image_captions) != len(gallery) or len(texts) != len(queries):
        raise ValueError(f"{len(texts)} texts for {len(queries)} text features, {len(image_captions)} captions for {len(gallery)} images")
    first: dict[str, int] = {}
    for i, text in enumerate(texts):
        first.setdefault(text_key(text), i)  # each distinct text's first caption queries for it
    row = {key: r for r, key in enumerate(first)}
    relevant = torch.zeros(len(first), len(gallery), dtype=torch.bool)
    for image, captions in enumerate(image_captions):
        for key in {text_key(c) for c in captions} & row.keys():
            relevant[row[key], image] = True
    scores = queries[list(first.values())] @ gallery.T
    # Descending by score, irrelevant first among equal scores (pessimistic, as the ranks above).
    order = torch.sort(relevant.float(), dim=1, stable=True).indices
    order = order.gather(1, torch.sort(scores.gather(1, order), dim=1, descending=True, stable=True).indices)
    hits = relevant.gather(1, order).float()
    n_rel = hits.sum(dim=1).clamp(min=1)
    precision = hits.cumsum(dim=1) / torch.arange(1, hits.shape[1] + 1)
    first_r = torch.arange(hits.shape[1])[None, :] < n_rel[:, None]
    values = (
        ((precision * hits).sum(dim=1) / n_rel).mean(),
        ((precision * hits * first_r).sum(dim=1) / n_rel).mean(),
        (hits[:, :LABEL_K].sum(dim=1) / min(LABEL_K, hits.shape[1])).mean(),
        (hits.sum(dim=1) > 1).float().mean(),
    )
    return {k: 100.0 * float(v) for k, v in zip((*LABEL_KEYS, "label/shared"), values)}


def shares_texts(texts: Sequence[str]) -> bool:
    """Whether any two of `texts` are the same text (after case and whitespace normalisation)."""
    return len({text_key(t) for t in texts}) < len(texts)


def saturated_keys(metrics: Sequence[str], captions_per_image: Sequence[int]) -> list[str]:
    """The R@k keys every query hits by construction: k reaches past all the negatives a query ranks.

    A text query has one positive among the images; an image query has its captions among all
    captions (CLIP_benchmark) or its first caption among the first captions (open_clip). On a
    gallery this small R@k says nothing about the model, so the table marks it.
    """
    n_images, n_captions = len(captions_per_image), sum(captions_per_image)
    fewest = min(captions_per_image, default=0)
    negatives = {
        "clip_benchmark/t2i": n_images - 1,
        "clip_benchmark/i2t": n_captions - fewest,
        "open_clip/t2i": n_images - 1,
        "open_clip/i2t": n_images - 1,
    }
    out = []
    for key in metrics:
        prefix, _, k = key.partition("_R@")
        if k.isdigit() and prefix in negatives and int(k) > negatives[prefix]:
            out.append(key)
    return out


def format_table(
    rows: list[tuple[str, dict[str, float | int]]], keys: Sequence[str] = DEFAULT_TABLE_KEYS
) -> str:
    """Plain-text table, one row per method, so zero-shot and prompted results read side by side.

    Raises KeyError when a row lacks one of ``keys`` rather than hiding a typo'd column.
    """
    header = ["method", *keys]
    body = []
    for name, metrics in rows:
        missing = [k for k in keys if k not in metrics]
        if missing:
            raise KeyError(f"row {name!r} has no metric(s) {missing}")
        body.append([name, *(_cell(metrics[k]) for k in keys)])
    widths = [max(len(line[c]) for line in [header, *body]) for c in range(len(header))]

    def render(line: list[str]) -> str:
        cells = [line[0].ljust(widths[0])]
        cells += [cell.rjust(w) for cell, w in zip(line[1:], widths[1:])]
        return "  ".join(cells).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([render(header), rule, *(render(line) for line in body)])


def _cell(value: float | int) -> str:
    """Metrics to one decimal; counts (parameters, bytes) as whole numbers."""
    return str(value) if isinstance(value, int) else f"{value:.1f}"


def _best_positive_ranks(
    queries: torch.Tensor,
    query_labels: torch.Tensor,
    candidates: torch.Tensor,
    candidate_labels: torch.Tensor,
    chunk_size: int,
) -> np.ndarray:
    """1-based pessimistic rank of each query's best positive (candidates sharing its label)."""
    ranks = torch.empty(len(queries), dtype=torch.int64, device=queries.device)
    for start in range(0, len(queries), chunk_size):
        stop = start + chunk_size
        scores = queries[start:stop] @ candidates.T
        positive = query_labels[start:stop, None] == candidate_labels[None, :]
        best = scores.masked_fill(~positive, float("-inf")).amax(dim=1, keepdim=True)
        ranks[start:stop] = 1 + ((scores >= best) & ~positive).sum(dim=1)
    return ranks.cpu().numpy()


def _validated(
    text_emb: np.ndarray | torch.Tensor,
    image_emb: np.ndarray | torch.Tensor,
    text_to_image: np.ndarray | Sequence[int],
    ks: Sequence[int],
    chunk_size: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Check the inputs and return float32 texts, images and int64 labels on one device."""
    texts = torch.as_tensor(text_emb).detach().to(torch.float32)
    images = torch.as_tensor(image_emb).detach().to(device=texts.device, dtype=torch.float32)
    if texts.ndim != 2 or images.ndim != 2:
        raise ValueError(
            f"text_emb and image_emb must be 2-D [N, D], got shapes "
            f"{tuple(texts.shape)} and {tuple(images.shape)}"
        )
    if texts.shape[0] == 0 or images.shape[0] == 0:
        raise ValueError("need at least one text and one image")
    if texts.shape[1] != images.shape[1]:
        raise ValueError(
            f"embedding dims differ: text_emb has D={texts.shape[1]}, image_emb has D={images.shape[1]}"
        )
    # A NaN score compares False with everything, which would silently yield rank 1.
    if not (torch.isfinite(texts).all() and torch.isfinite(images).all()):
        raise ValueError("embeddings contain NaN or infinite values")

    labels = np.asarray(text_to_image)
    if labels.ndim != 1 or labels.shape[0] != texts.shape[0]:
        raise ValueError(
            f"text_to_image must be 1-D with one entry per text ({texts.shape[0]}), "
            f"got shape {labels.shape}"
        )
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"text_to_image must hold integer image indices, got dtype {labels.dtype}")
    n_images = images.shape[0]
    out_of_range = np.flatnonzero((labels < 0) | (labels >= n_images))
    if out_of_range.size:
        t = out_of_range[0]
        raise ValueError(
            f"text_to_image[{t}] = {labels[t]} is out of range for {n_images} images "
            f"({out_of_range.size} bad entries)"
        )
    uncaptioned = np.flatnonzero(np.bincount(labels, minlength=n_images) == 0)
    if uncaptioned.size:
        raise ValueError(
            f"{uncaptioned.size} image(s) have no caption, e.g. image {uncaptioned[0]}; "
            "every image needs at least one"
        )

    if not ks or any(isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1 for k in ks):
        raise ValueError(f"ks must be a non-empty sequence of positive ints, got {ks!r}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    return texts, images, torch.as_tensor(labels, dtype=torch.int64, device=texts.device)
