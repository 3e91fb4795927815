"""Retrieval metrics: hand-computed rank cases, both definitions, chunking and validation."""

import numpy as np
import pytest
import torch

from dbprompt.metrics import format_table, retrieval_metrics

# Hand-made text x image scores. With image_emb = identity, text_emb @ image_emb.T
# reproduces SCORES exactly in float32 (products with 1 and sums with 0 are exact).
SCORES = np.array(
    [
        [0.9, 0.1, 0.2],  # t0 -> img0: rank 1
        [0.3, 0.2, 0.8],  # t1 -> img1: 0.3 and 0.8 beat 0.2 -> rank 3
        [0.5, 0.5, 0.5],  # t2 -> img2: two tied negatives -> rank 3 (pessimistic)
        [0.4, 0.6, 0.1],  # t3 -> img0: 0.6 beats 0.4 -> rank 2
        [0.0, 0.7, 0.7],  # t4 -> img1: one tied negative -> rank 2
        [0.6, 0.1, 0.5],  # t5 -> img2: 0.6 beats 0.5 -> rank 2
    ],
    dtype=np.float32,
)
LABELS = np.array([0, 1, 2, 0, 1, 2])


def hand_metrics() -> dict[str, float]:
    return retrieval_metrics(SCORES, np.eye(3, dtype=np.float32), LABELS, ks=(1, 2))


def test_clip_benchmark_t2i_ranks_with_pessimistic_ties() -> None:
    m = hand_metrics()
    # ranks [1, 3, 3, 2, 2, 2]
    assert m["clip_benchmark/t2i_R@1"] == pytest.approx(100 / 6)
    assert m["clip_benchmark/t2i_R@2"] == pytest.approx(400 / 6)
    assert m["clip_benchmark/t2i_median_rank"] == 2.0
    assert m["clip_benchmark/t2i_mean_rank"] == pytest.approx(13 / 6)


def test_clip_benchmark_i2t_any_caption_hit_and_other_positives_ignored() -> None:
    m = hand_metrics()
    # img0 column [.9 .3 .5 .4 .0 .6], positives t0,t3: best .9, nothing above -> rank 1
    # img1 column [.1 .2 .5 .6 .7 .1], positives t1,t4: its first caption t1 is poor,
    #   but t4 (.7) beats every negative -> rank 1 (any-caption hit)
    # img2 column [.2 .8 .5 .1 .7 .5], positives t2,t5 tie at .5: negatives t1,t4 are
    #   >= .5 -> rank 3; the tied other positive must not make it 4
    assert m["clip_benchmark/i2t_R@1"] == pytest.approx(200 / 3)
    assert m["clip_benchmark/i2t_R@2"] == pytest.approx(200 / 3)
    assert m["clip_benchmark/i2t_median_rank"] == 1.0
    assert m["clip_benchmark/i2t_mean_rank"] == pytest.approx(5 / 3)


def test_open_clip_uses_first_caption_one_to_one() -> None:
    m = hand_metrics()
    # 1:1 on texts t0,t1,t2 vs images 0,1,2 (first 3 rows of SCORES)
    # t2i ranks [1, 3, 3]; i2t: img0 [.9 .3 .5] -> 1, img1 [.1 .2 .5] -> 2, img2 [.2 .8 .5] -> 2
    assert m["open_clip/t2i_R@1"] == pytest.approx(100 / 3)
    assert m["open_clip/t2i_R@2"] == pytest.approx(100 / 3)
    assert m["open_clip/t2i_median_rank"] == 3.0
    assert m["open_clip/t2i_mean_rank"] == pytest.approx(7 / 3)
    assert m["open_clip/i2t_R@1"] == pytest.approx(100 / 3)
    assert m["open_clip/i2t_R@2"] == 100.0
    assert m["open_clip/i2t_median_rank"] == 2.0
    assert m["open_clip/i2t_mean_rank"] == pytest.approx(5 / 3)


def test_definitions_differ_on_same_embeddings() -> None:
    m = hand_metrics()
    assert m["clip_benchmark/i2t_R@1"] != pytest.approx(m["open_clip/i2t_R@1"])
    assert m["clip_benchmark/t2i_median_rank"] != m["open_clip/t2i_median_rank"]


def test_first_caption_is_lowest_text_index_not_first_rows() -> None:
    # Captions of image 0 are t1 and t2; its first caption is t1 (good), t2 is bad.
    scores = np.array([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    m = retrieval_metrics(scores, np.eye(2, dtype=np.float32), np.array([1, 0, 0]), ks=(1,))
    # pairs (t1, img0) and (t0, img1): both perfect
    assert m["open_clip/t2i_R@1"] == 100.0
    assert m["open_clip/i2t_R@1"] == 100.0
    cb = {k: v for k, v in m.items() if k.startswith("clip_benchmark/")}
    # swap the two captions of image 0: the bad one now comes first
    m = retrieval_metrics(scores[[0, 2, 1]], np.eye(2, dtype=np.float32), np.array([1, 0, 0]), ks=(1,))
    assert m["open_clip/t2i_R@1"] == 50.0
    assert m["open_clip/i2t_R@1"] == 0.0  # both first captions score [0, 1]: every image ties
    assert {k: v for k, v in m.items() if k.startswith("clip_benchmark/")} == cb  # order-independent


def test_constant_embeddings_score_worst_possible() -> None:
    texts = np.ones((4, 3), dtype=np.float32) / np.sqrt(3)
    images = np.ones((2, 3), dtype=np.float32) / np.sqrt(3)
    m = retrieval_metrics(texts, images, np.array([0, 1, 0, 1]), ks=(1, 2, 3))
    for prefix in ("clip_benchmark", "open_clip"):
        assert m[f"{prefix}/t2i_R@1"] == 0.0
        assert m[f"{prefix}/i2t_R@1"] == 0.0
        assert m[f"{prefix}/t2i_mean_rank"] == 2.0  # last of 2 images
    # each image has 2 captions among 4 texts: best positive is behind both negatives
    assert m["clip_benchmark/i2t_mean_rank"] == 3.0
    assert m["clip_benchmark/i2t_R@2"] == 0.0
    assert m["clip_benchmark/i2t_R@3"] == 100.0


def test_median_rank_is_floored_for_even_counts() -> None:
    scores = np.array([[1.0, 0.0], [1.0, 0.5]], dtype=np.float32)  # t2i ranks [1, 2]
    m = retrieval_metrics(scores, np.eye(2, dtype=np.float32), np.array([0, 1]), ks=(1,))
    assert m["open_clip/t2i_mean_rank"] == 1.5
    assert m["open_clip/t2i_median_rank"] == 1.0


def test_keys_are_exactly_the_documented_ones() -> None:
    m = retrieval_metrics(np.eye(2, dtype=np.float32), np.eye(2, dtype=np.float32), [0, 1])
    expected = {
        f"{p}/{d}_{s}"
        for p in ("clip_benchmark", "open_clip")
        for d in ("t2i", "i2t")
        for s in ("R@1", "R@5", "R@10", "median_rank", "mean_rank")
    }
    assert set(m) == expected
    assert all(type(v) is float for v in m.values())


def naive_best_positive_ranks(scores: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """Direct per-query reading of the rank definition, for cross-checking."""
    ranks = []
    for row, pos in zip(scores, positive):
        best = row[pos].max()
        ranks.append(1 + int(np.sum((row >= best) & ~pos)))
    return np.array(ranks)


def test_chunked_matches_unchunked_and_naive_with_many_ties() -> None:
    rng = np.random.default_rng(0)
    n_images, n_texts = 40, 130
    # Small integer embeddings: lots of exact ties, and float32 sums are exact in any order.
    images = rng.integers(-2, 3, size=(n_images, 6)).astype(np.float32)
    texts = rng.integers(-2, 3, size=(n_texts, 6)).astype(np.float32)
    labels = rng.permutation(np.concatenate([np.arange(n_images), rng.integers(0, n_images, n_texts - n_images)]))

    whole = retrieval_metrics(texts, images, labels, chunk_size=10_000)
    for chunk_size in (1, 7, 64):
        assert retrieval_metrics(texts, images, labels, chunk_size=chunk_size) == whole

    scores = texts @ images.T
    positive = labels[:, None] == np.arange(n_images)[None, :]
    t2i = naive_best_positive_ranks(scores, positive)
    i2t = naive_best_positive_ranks(scores.T, positive.T)
    assert len(np.unique(t2i)) > 3  # the case exercises a spread of ranks
    for name, r in (("t2i", t2i), ("i2t", i2t)):
        assert whole[f"clip_benchmark/{name}_mean_rank"] == pytest.approx(r.mean())
        assert whole[f"clip_benchmark/{name}_median_rank"] == np.floor(np.median(r))
        for k in (1, 5, 10):
            assert whole[f"clip_benchmark/{name}_R@{k}"] == pytest.approx(100 * np.mean(r <= k))


def test_torch_and_numpy_inputs_agree() -> None:
    rng = np.random.default_rng(1)
    texts = rng.standard_normal((20, 8))  # float64 in, computed as float32
    images = rng.standard_normal((10, 8))
    labels = np.arange(20) % 10
    from_numpy = retrieval_metrics(texts, images, labels)
    from_torch = retrieval_metrics(torch.from_numpy(texts).float(), torch.from_numpy(images).float(), labels)
    assert from_numpy == from_torch


def open_clip_get_clip_metrics(image_features: torch.Tensor, text_features: torch.Tensor) -> dict[str, float]:
    """Reimplementation of open_clip_train.train.get_clip_metrics (argsort-based, R@k as fractions)."""
    metrics = {}
    logits_per_image = image_features @ text_features.t()
    logits = {"image_to_text": logits_per_image, "text_to_image": logits_per_image.t()}
    ground_truth = torch.arange(len(text_features)).view(-1, 1)
    for name, logit in logits.items():
        ranking = torch.argsort(logit, descending=True)
        preds = torch.where(ranking == ground_truth)[1].numpy()
        metrics[f"{name}_mean_rank"] = preds.mean() + 1
        metrics[f"{name}_median_rank"] = np.floor(np.median(preds)) + 1
        for k in (1, 5, 10):
            metrics[f"{name}_R@{k}"] = np.mean(preds < k)
    return metrics


def random_multi_caption_case(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    n_images, n_texts, dim = 64, 200, 8  # low dim keeps ranks spread beyond 1
    images = rng.standard_normal((n_images, dim)).astype(np.float32)
    images /= np.linalg.norm(images, axis=1, keepdims=True)
    labels = rng.permutation(np.concatenate([np.arange(n_images), rng.integers(0, n_images, n_texts - n_images)]))
    texts = images[labels] + 0.8 * rng.standard_normal((n_texts, dim)).astype(np.float32)
    texts /= np.linalg.norm(texts, axis=1, keepdims=True)
    return texts, images, labels


def assert_matches_open_clip(ours: dict[str, float], theirs: dict[str, float]) -> None:
    for ours_dir, their_dir in (("t2i", "text_to_image"), ("i2t", "image_to_text")):
        for k in (1, 5, 10):
            assert ours[f"open_clip/{ours_dir}_R@{k}"] == 100 * theirs[f"{their_dir}_R@{k}"]
        assert ours[f"open_clip/{ours_dir}_median_rank"] == theirs[f"{their_dir}_median_rank"]
        assert ours[f"open_clip/{ours_dir}_mean_rank"] == pytest.approx(theirs[f"{their_dir}_mean_rank"], rel=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_open_clip_definition_matches_argsort_reimplementation(seed: int) -> None:
    texts, images, labels = random_multi_caption_case(seed)
    first_caption = np.array([np.flatnonzero(labels == i)[0] for i in range(len(images))])
    scores = texts[first_caption] @ images.T
    # Continuous scores: no ties within a query's ranking (text queries: rows; image queries: columns).
    assert all(len(np.unique(row)) == row.size for row in scores)
    assert all(len(np.unique(col)) == col.size for col in scores.T)

    ours = retrieval_metrics(texts, images, labels, chunk_size=16)
    theirs = open_clip_get_clip_metrics(torch.from_numpy(images), torch.from_numpy(texts[first_caption]))
    assert 0 < theirs["text_to_image_R@1"] < 1  # not a trivial case
    assert_matches_open_clip(ours, theirs)


def test_open_clip_definition_matches_installed_open_clip() -> None:
    train = pytest.importorskip("open_clip_train.train")
    texts, images, labels = random_multi_caption_case(3)
    first_caption = np.array([np.flatnonzero(labels == i)[0] for i in range(len(images))])
    theirs = train.get_clip_metrics(torch.from_numpy(images), torch.from_numpy(texts[first_caption]), 1.0)
    assert_matches_open_clip(retrieval_metrics(texts, images, labels), theirs)


@pytest.mark.parametrize(
    ("texts", "images", "labels", "message"),
    [
        (np.zeros((3,)), np.zeros((2, 4)), [0, 1, 1], "2-D"),
        (np.zeros((3, 4)), np.zeros((2, 5)), [0, 1, 1], "dims differ"),
        (np.zeros((0, 4)), np.zeros((2, 4)), [], "at least one text"),
        (np.zeros((3, 4)), np.zeros((2, 4)), [0, 1], "one entry per text"),
        (np.zeros((3, 4)), np.zeros((2, 4)), [[0, 1, 1]], "one entry per text"),
        (np.zeros((3, 4)), np.zeros((2, 4)), [0.0, 1.0, 1.0], "integer"),
        (np.zeros((3, 4)), np.zeros((2, 4)), [0, 2, 1], r"text_to_image\[1\] = 2 is out of range"),
        (np.zeros((3, 4)), np.zeros((2, 4)), [0, -1, 1], r"text_to_image\[1\] = -1 is out of range"),
        (np.zeros((3, 4)), np.zeros((3, 4)), [0, 0, 2], "image 1"),
        (np.full((3, 4), np.nan), np.zeros((2, 4)), [0, 1, 1], "NaN"),
    ],
)
def test_invalid_inputs_raise(texts, images, labels, message) -> None:
    with pytest.raises(ValueError, match=message):
        retrieval_metrics(texts, images, np.asarray(labels))


@pytest.mark.parametrize("ks", [(), (0,), (1, -5), (1.5,), (True,)])
def test_invalid_ks_raise(ks) -> None:
    with pytest.raises(ValueError, match="ks"):
        retrieval_metrics(np.eye(2), np.eye(2), np.array([0, 1]), ks=ks)


def test_invalid_chunk_size_raises() -> None:
    with pytest.raises(ValueError, match="chunk_size"):
        retrieval_metrics(np.eye(2), np.eye(2), np.array([0, 1]), chunk_size=0)


def test_format_table_aligns_columns_to_one_decimal() -> None:
    rows = [("zero-shot", {"a": 12.345, "b": 100.0}), ("prompted (ours)", {"a": 7.04, "b": 99.96})]
    assert format_table(rows, keys=("a", "b")).splitlines() == [
        "method              a      b",
        "---------------  ----  -----",
        "zero-shot        12.3  100.0",
        "prompted (ours)   7.0  100.0",
    ]


def test_format_table_default_keys_and_missing_key() -> None:
    m = retrieval_metrics(SCORES, np.eye(3, dtype=np.float32), LABELS)
    table = format_table([("zero-shot", m)])
    assert table.splitlines()[0].split() == [
        "method",
        "clip_benchmark/t2i_R@1",
        "clip_benchmark/t2i_R@5",
        "clip_benchmark/t2i_R@10",
        "clip_benchmark/i2t_R@1",
        "clip_benchmark/i2t_R@5",
        "clip_benchmark/i2t_R@10",
    ]
    assert table.splitlines()[2].split() == ["zero-shot", "16.7", "100.0", "100.0", "66.7", "100.0", "100.0"]
    with pytest.raises(KeyError, match="nope"):
        format_table([("zero-shot", m)], keys=("nope",))


def test_distractors_only_lengthen_text_to_image_ranks() -> None:
    # As an image, the distractor scores SCORES[t] @ distractor for caption t (1.005 to 1.375),
    # above every caption's own image, so each text->image rank grows by one.
    distractor = np.array([[0.85, 0.95, 0.95]], dtype=np.float32)
    plain = hand_metrics()
    m = retrieval_metrics(SCORES, np.eye(3, dtype=np.float32), LABELS, ks=(1, 2), distractors=distractor)
    scores = SCORES @ distractor[0]
    own = SCORES[np.arange(6), LABELS]
    expected_t2i = np.array([1, 3, 3, 2, 2, 2]) + (scores >= own)
    assert m["clip_benchmark/t2i_mean_rank"] == pytest.approx(expected_t2i.mean())
    assert m["clip_benchmark/t2i_mean_rank"] > plain["clip_benchmark/t2i_mean_rank"]
    assert m["open_clip/t2i_mean_rank"] == pytest.approx(np.mean(expected_t2i[:3]))
    # Image->text queries are the captioned images only, so they do not change.
    for key in plain:
        if "i2t" in key:
            assert m[key] == plain[key]


def test_distractors_of_another_width_raise() -> None:
    with pytest.raises(ValueError, match="distractors"):
        retrieval_metrics(SCORES, np.eye(3, dtype=np.float32), LABELS, distractors=np.ones((2, 4), dtype=np.float32))
