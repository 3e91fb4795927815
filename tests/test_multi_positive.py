"""Multi-positive targets where captions are shared (folders, tags): exact where they are not, and alike
over one process and two (gloo)."""

from __future__ import annotations

import math
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from torch import distributed as dist

from dbprompt.data.records import Record
from dbprompt.training.keys import CaptionKeys
from dbprompt.training.loss import ContrastiveLoss, calibrate_logit_scale, clip_loss, relevance


def _features(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    unit = lambda: torch.nn.functional.normalize(torch.randn(n, 16, generator=g), dim=-1)  # noqa: E731
    return unit(), unit()


def _keys(image_keys: list[list[int]], text_keys: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, image_keys))
    padded = torch.tensor([k + [-1] * (width - len(k)) for k in image_keys])
    return padded, torch.tensor(text_keys)


def test_unique_keys_reduce_exactly_to_clip_loss():
    images, texts = _features(8)
    scale = torch.tensor(math.log(20.0))
    plain = clip_loss(images, texts, scale)
    keyed = clip_loss(images, texts, scale, keys=_keys([[i] for i in range(8)], list(range(8))))
    assert float(keyed) == pytest.approx(float(plain), abs=1e-6)


def test_soft_targets_spread_over_every_relevant_column_both_ways():
    images, texts = _features(4)
    scale = torch.tensor(math.log(10.0))
    # Image 0 is tagged "dog" (key 0) and "beach" (1); image 1 "dog"; images 2, 3 other things; the texts
    # drawn this step: "dog" (for 0), "dog" (for 1), 2's and 3's own.
    keys = _keys([[0, 1], [0], [2], [3]], [0, 0, 2, 3])
    relevant = relevance(keys)
    assert relevant.tolist() == [[True, True, False, False], [True, True, False, False], [False, False, True, False], [False, False, False, True]]
    logits = 10.0 * images @ texts.T
    by_hand = 0.0
    for rows, targets in ((logits, relevant), (logits.T, relevant.T)):
        for row, target in zip(rows.log_softmax(dim=1), targets):
            by_hand += -float(row[target].mean()) / 4 / 2
    assert float(clip_loss(images, texts, scale, keys=keys)) == pytest.approx(by_hand, abs=1e-6)
    assert float(clip_loss(images, texts, scale)) != pytest.approx(by_hand, abs=1e-3)


def test_verbatim_repeats_equal_clip_loss_since_their_features_tie():
    """Why repeated class texts alone learn no differently with soft targets: the positives of a row tie."""
    images, texts = _features(6)
    texts = texts[[0, 0, 0, 3, 3, 5]]  # three images of one class, two of another
    keys = _keys([[0], [0], [0], [1], [1], [2]], [0, 0, 0, 1, 1, 2])
    scale = torch.tensor(math.log(30.0))
    assert float(clip_loss(images, texts, scale, keys=keys)) == pytest.approx(float(clip_loss(images, texts, scale)), abs=1e-5)


def test_calibration_fits_the_scale_with_the_training_targets():
    images, texts = _features(32, seed=1)
    texts = torch.nn.functional.normalize(images + 0.8 * texts, dim=-1)
    keys = _keys([[i % 4, 4 + i % 3] for i in range(32)], [i % 4 for i in range(32)])
    chosen = calibrate_logit_scale(images, texts, batch_size=16, keys=keys)
    grid = torch.linspace(0.0, math.log(100.0), 64)

    def total(c: float) -> float:
        return sum(float(clip_loss(images[s : s + 16], texts[s : s + 16], torch.tensor(c), keys=(keys[0][s : s + 16], keys[1][s : s + 16]))) for s in (0, 16))

    assert total(chosen) == pytest.approx(min(total(float(c)) for c in grid), abs=1e-6)


def test_caption_keys_number_labels_alike_and_stay_out_of_the_way_of_descriptions():
    rec = lambda key, *captions: Record(key, None, captions)  # noqa: E731
    tags = [rec("a", "a photo of dog", "a photo of beach"), rec("b", "A photo  of Dog"), rec("c", "a photo of beach", "a cat"),
            rec("d", "a cat")]
    keys = CaptionKeys(tags)  # every text belongs to two images: labels
    assert keys.labels and keys.width == 2
    image_keys, text_keys = keys.batch([0, 1, 2, 3], ["a photo of beach", "a photo of dog", "a cat", "a cat"])
    assert relevance((image_keys, text_keys)).tolist() == [
        [True, True, False, False], [False, True, False, False], [True, False, True, True], [False, False, True, True]
    ]
    # Descriptions, of which one text in four is shared: the plain loss.
    described = CaptionKeys([rec("a", "one", "two"), rec("b", "three", "one"), rec("c", "four")])
    assert not described.labels and described.batch([0, 1], ["one", "three"]) is None


def _rank(rank: int, port: int, images, texts, keys, out) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    half = slice(rank * 4, rank * 4 + 4)
    mine = images[half].clone().requires_grad_(True)
    loss = ContrastiveLoss(torch.tensor(math.log(10.0)), rank=rank, world=2)(mine, texts[half], (keys[0][half], keys[1][half]))
    loss.backward()
    out[rank] = torch.cat([loss.detach().reshape(1), mine.grad.flatten()])
    dist.destroy_process_group()


def test_two_ranks_gather_the_keys_with_the_features():
    images, texts = _features(8, seed=2)
    keys = _keys([[i % 3] for i in range(8)], [i % 3 for i in range(8)])
    texts = torch.nn.functional.normalize(texts + torch.randn(8, 16, generator=torch.Generator().manual_seed(3)), dim=-1)
    whole = images.clone().requires_grad_(True)
    expected = ContrastiveLoss(torch.tensor(math.log(10.0)))(whole, texts, keys)
    expected.backward()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = mp.Manager().dict()
    mp.spawn(_rank, args=(port, images, texts, keys, out), nprocs=2)
    for rank in (0, 1):
        # Each rank's loss is the whole batch's; the gathered features' backward sums both ranks' copies, so
        # its gradient is twice its share of the whole's (which the trainer's averaging over ranks undoes).
        assert float(out[rank][0]) == pytest.approx(float(expected.detach()), abs=1e-6)
        assert torch.allclose(out[rank][1:].view(4, 16), 2 * whole.grad[rank * 4 : rank * 4 + 4], atol=1e-6)


def _rank_with_negatives(rank: int, port: int, images, texts, negatives, keys, out) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    half = slice(rank * 4, rank * 4 + 4)
    mine = images[half].clone().requires_grad_(True)
    share = negatives[:3] if rank == 0 else negatives[3:]  # uneven shares, as ranks get them
    loss = ContrastiveLoss(torch.tensor(math.log(10.0)), rank=rank, world=2)(mine, texts[half], (keys[0][half], keys[1][half]), share)
    loss.backward()
    out[rank] = torch.cat([loss.detach().reshape(1), mine.grad.flatten()])
    dist.destroy_process_group()


@pytest.mark.parametrize("count", [3, 4])
def test_two_ranks_gather_marked_negatives_with_the_pairs(count):
    from dbprompt.training.loss import hard_negative_loss

    images, texts = _features(8, seed=2)
    negatives = _features(count, seed=5)[0]  # 3: rank 1 has none of them
    keys = _keys([[i % 3] for i in range(8)], [i % 3 for i in range(8)])
    whole = images.clone().requires_grad_(True)
    expected = hard_negative_loss(whole, texts, negatives, torch.tensor(math.log(10.0)), keys)
    expected.backward()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = mp.Manager().dict()
    mp.spawn(_rank_with_negatives, args=(port, images, texts, negatives, keys, out), nprocs=2)
    for rank in (0, 1):
        assert float(out[rank][0]) == pytest.approx(float(expected.detach()), abs=1e-6)
        assert torch.allclose(out[rank][1:].view(4, 16), 2 * whole.grad[rank * 4 : rank * 4 + 4], atol=1e-6)


def test_hard_negatives_join_the_text_side_only():
    from dbprompt.training.loss import hard_negative_loss

    images, texts = _features(4)
    negatives = _features(2, seed=5)[0]
    scale = torch.tensor(math.log(10.0))
    got = hard_negative_loss(images, texts, negatives, scale)
    logits = 10.0 * torch.cat([images, negatives]) @ texts.T  # [6, 4]
    i2t = torch.nn.functional.cross_entropy(logits[:4], torch.arange(4))
    t2i = torch.nn.functional.cross_entropy(logits.T, torch.arange(4))
    assert float(got) == pytest.approx(float((i2t + t2i) / 2), abs=1e-6)
    assert float(got) > float(clip_loss(images, texts, scale))  # more negatives: a harder task
