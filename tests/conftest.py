"""Shared fixtures: a tiny random-weight backbone and a tiny synthetic database."""

from __future__ import annotations

import open_clip
import pytest
import torch
from tinydata import write_database

from dbprompt.backbones import load_backbone
from dbprompt.backbones.openclip import OpenClipAdapter
from dbprompt.data import assign_splits, load_database


@pytest.fixture(autouse=True)
def own_cache_dir(tmp_path_factory, monkeypatch):
    """Each test its own dbprompt cache directory (the backbones remembered by --model: backbones.registry),
    so no test reads or writes the user's, and none sees what another test named."""
    cache = tmp_path_factory.mktemp("dbprompt-cache")
    monkeypatch.setenv("DBPROMPT_CACHE_DIR", str(cache))
    return cache


@pytest.fixture(scope="session")
def tiny_backbone():
    return load_backbone("dbprompt-tiny")


@pytest.fixture(scope="session")
def tiny_db(tmp_path_factory):
    """40 images of coloured shapes (tests/tinydata.py) with 3 captions each, as an imagefolder.

    Learnable enough that 8 epochs lower the tiny random backbone's loss by 0.2 to 0.5 on every seed
    tried; which epoch validation keeps on so few images is noise, so no test depends on it.
    """
    return write_database(tmp_path_factory.mktemp("db") / "shapes", 40, seed=0, image_size=32)


@pytest.fixture(scope="session")
def tiny_records(tiny_db):
    return assign_splits(load_database(tiny_db).records, val_fraction=0.2, test_fraction=0.2, seed=0)


def adapter_for(net: torch.nn.Module, name: str, tokenizer_name: str = "ViT-B-32") -> OpenClipAdapter:
    """Wrap a hand-built open_clip model (configs no registry entry describes)."""
    preprocess = open_clip.image_transform(net.visual.image_size, is_train=False)
    adapter = OpenClipAdapter(net, lambda: open_clip.get_tokenizer(tokenizer_name), preprocess, name, "random")
    return adapter.eval().requires_grad_(False)


@pytest.fixture
def one_thread():
    """Bit-identical results are promised on one thread (README, Reproducibility)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def as_stored(model) -> None:
    """Round a model's prompt parameters as a prompt file stores them (float16), in place."""
    with torch.no_grad():
        for p in model.prompts.parameters():
            p.copy_(p.half().float())


@pytest.fixture(scope="module")
def browser():
    """Headless chromium for the browser tests (tests/chromium.py), one per test module."""
    from chromium import launched

    with launched() as browser:
        yield browser


@pytest.fixture
def epochs_chosen_on_tiny_validation(monkeypatch):
    """Validation chooses epochs even on the few images of the tiny databases (a run keeps its last epoch where
    validation has fewer than trainer.MIN_CHOOSING images): for the tests of how it chooses."""
    from dbprompt.training import trainer

    monkeypatch.setattr(trainer, "MIN_CHOOSING", 1)
