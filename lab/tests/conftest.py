"""The lab's shared fixtures: the tiny random-weight backbone and a tiny database of the lab's own world.

The same fixtures as the product's tests/conftest.py, written again rather than imported: the lab
depends on dbprompt, never on the product's tests. Its database is the synthetic world's
(dbprompt_lab.world), which is what the lab's code is about.
"""

from __future__ import annotations

from typing import Iterator

import pytest
import torch

from dbprompt.backbones import BackboneAdapter, load_backbone
from dbprompt.data import Record, assign_splits, load_database
from dbprompt_lab.world import write_database


@pytest.fixture(autouse=True)
def own_cache_dir(tmp_path_factory, monkeypatch):
    """Each test its own dbprompt cache directory, never the user's (dbprompt remembers backbones named there)."""
    monkeypatch.setenv("DBPROMPT_CACHE_DIR", str(tmp_path_factory.mktemp("dbprompt-cache")))


@pytest.fixture(scope="session")
def tiny_backbone() -> BackboneAdapter:
    return load_backbone("dbprompt-tiny")


@pytest.fixture(scope="session")
def tiny_db(tmp_path_factory):
    """40 synthetic images with 3 captions each, as an imagefolder."""
    return write_database(tmp_path_factory.mktemp("db") / "shapes", 40, seed=1, image_size=32)


@pytest.fixture(scope="session")
def tiny_records(tiny_db) -> list[Record]:
    return assign_splits(load_database(tiny_db).records, val_fraction=0.2, test_fraction=0.2, seed=0)


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Bit-identical results are promised on one thread (README, Reproducibility)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
