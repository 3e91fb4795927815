"""`dbprompt index --ray`: a shard database embedded on a local Ray instance, a worker killed mid-run.

Ray is an optional extra; these tests are skipped without it. Each starts a local instance of
2 CPUs on 127.0.0.1 (nothing here imports ray before dbprompt does, so it stays on the loopback)
and shuts it down.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import sys
from typing import Callable

import numpy as np
import pytest
from search_fixtures import make_prompt_file
from tinydata import write_database, write_webdataset

from dbprompt.cli import main
from dbprompt.index import all_vectors, build_index, load_index
from dbprompt.index.distributed import INSTALL_HINT, RayOptions, ray_session
from dbprompt.index.workdir import WorkDir

psutil = pytest.importorskip("psutil")
LOCAL = RayOptions(workers=2, num_cpus=2)
NO_RAY = importlib.util.find_spec("ray") is None


def needs_ray(test: Callable) -> Callable:
    """Skipped without Ray; slow with it (a local instance starts), so `make test-fast` leaves it out."""
    skip = pytest.mark.skipif(NO_RAY, reason="Ray is an optional extra: pip install 'dbprompt[ray]'")
    return pytest.mark.slow(skip(test))


def index_contents(index_dir) -> tuple[list[tuple[int, str]], np.ndarray]:
    index = load_index(index_dir)
    try:
        return [(row.id, row.key) for row in index.all_rows()], all_vectors(index.vectors)
    finally:
        index.close()


def kill_one_actor() -> int:
    """SIGKILL one of this test's embedding actors (a process under this one, titled after the actor)."""
    actors = [p for p in psutil.Process().children(recursive=True) if "_Embedder" in " ".join(p.cmdline())]
    assert actors, "no embedding actor is running"
    os.kill(actors[0].pid, signal.SIGKILL)
    return actors[0].pid


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    base = tmp_path_factory.mktemp("ray")
    return write_webdataset(write_database(base / "db", 300, seed=2, image_size=32), base / "shards", per_shard=50)


@needs_ray
def test_a_worker_killed_mid_run_costs_only_its_part_and_the_index_equals_one_process(
    tmp_path, tiny_backbone, shards, monkeypatch
):
    prompts = make_prompt_file(tmp_path / "p.safetensors", tiny_backbone, seed=4)
    build_index(shards, prompts, tmp_path / "one", backbone=tiny_backbone, progress=False)

    saved: list[list[str]] = []
    killed: list[int] = []
    save = WorkDir.save

    def save_and_kill(self, items):
        if not items:  # the final flush of nothing
            return
        saved.append(list(items))
        if len(saved) == 3:  # both actors are embedding by now, with parts queued behind
            killed.append(kill_one_actor())
        save(self, items)

    monkeypatch.setattr(WorkDir, "save", save_and_kill)
    info = build_index(shards, prompts, tmp_path / "ray", backbone=tiny_backbone, progress=False, checkpoint_every=10, ray=LOCAL)

    assert killed and len(saved) == 30, "the kill came mid-run: parts arrived after it"
    keys = [key for part in saved for key in part]
    assert len(keys) == len(set(keys)) == 300, "no finished part was embedded again"
    assert info.last_build["embedded"] == 300
    (one_rows, one_vectors), (ray_rows, ray_vectors) = index_contents(tmp_path / "one"), index_contents(tmp_path / "ray")
    assert ray_rows == one_rows and ray_rows[0][1] == "00000.tar/000000000"
    np.testing.assert_allclose(ray_vectors, one_vectors, atol=1e-5)


@needs_ray
def test_a_run_stopped_part_way_resumes_on_ray_from_its_parts(tmp_path, tiny_backbone, shards, monkeypatch):
    prompts = make_prompt_file(tmp_path / "p.safetensors", tiny_backbone, seed=5)
    save = WorkDir.save
    calls: list[int] = []

    class Stopped(Exception):
        pass

    def stop_after_two(self, items):
        save(self, items)
        calls.append(len(items))
        if len(calls) == 2:
            raise Stopped

    monkeypatch.setattr(WorkDir, "save", stop_after_two)
    with ray_session(LOCAL):  # one instance for both runs (each run still starts its own actors)
        with pytest.raises(Stopped):
            build_index(shards, prompts, tmp_path / "idx", backbone=tiny_backbone, progress=False, checkpoint_every=100, ray=LOCAL)
        monkeypatch.setattr(WorkDir, "save", save)
        info = build_index(shards, prompts, tmp_path / "idx", backbone=tiny_backbone, progress=False, checkpoint_every=100, ray=LOCAL)
    assert info.last_build["embedded"] == 100 and info.count == 300  # the two saved parts were not embedded again


def test_without_ray_the_flag_says_how_to_install_it(tmp_path, tiny_backbone, shards, monkeypatch, capsys):
    prompts = make_prompt_file(tmp_path / "p.safetensors", tiny_backbone, seed=6)
    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed
    args = ["index", str(shards), "--ray", "--prompts", str(prompts), "--out", str(tmp_path / "idx"), "--no-progress"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert INSTALL_HINT in err and "Traceback" not in err
    assert not (tmp_path / "idx").exists()
