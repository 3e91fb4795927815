"""The lab's shared fixtures: the tiny random-weight backbone and a tiny database of the lab's own world.

The same fixtures as the product's tests/conftest.py, written again rather than imported: the lab
depends on dbprompt, never on the product's tests. Its database is the synthetic world's
(dbprompt_lab.world), which is what the lab's code is about.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable, Iterator

import pytest
import torch

from dbprompt.backbones import BackboneAdapter, load_backbone, model_dirs
from dbprompt.data import Record, assign_splits, load_database
from dbprompt_lab import cli, proxy
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


@pytest.fixture
def tiny_a(tmp_path, monkeypatch, one_thread):
    """A stand-in for the first proxy: its world and loss on the tiny architecture, 2 epochs of 24 images."""
    home = tmp_path / "models"
    home.mkdir()
    (home / "tiny-a.json").write_text((model_dirs.OWN / "dbprompt-tiny.json").read_text())
    monkeypatch.setattr(model_dirs, "_dirs", list(model_dirs.model_dirs()[1:]))
    model_dirs.add_model_dir(home)
    spec = replace(proxy.PROXIES[proxy.NAME], name="tiny-a", image_size=32, images=24, home=home,
                   recipe=replace(proxy.RECIPE, epochs=2, batch_size=8, checkpoint_every=1))
    monkeypatch.setitem(proxy.PROXIES, "tiny-a", spec)
    monkeypatch.setattr(proxy, "TEST_IMAGES", 12)
    monkeypatch.setattr(proxy, "LINEAR_IMAGES", 48)
    monkeypatch.setattr(proxy, "VAL_FRACTION", 0.3)
    return spec


@pytest.fixture
def pretrain_tiny_a(tiny_a) -> Callable[..., int]:
    """`dbprompt-lab proxy pretrain` of the `tiny_a` stand-in: (work dir, *options) -> its exit status."""
    def run(work, *extra: str) -> int:
        return cli.main(["proxy", "pretrain", "--model", "tiny-a", "--work-dir", str(work), "--device", "cpu", "--no-progress", *extra])
    return run
