"""An index through a user's worst moments: `dbprompt index` killed with -9 at several points and run
again at once, and an index rebuilt while a server answers queries on it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from search_fixtures import make_prompt_file, running_server
from tinydata import write_database

from dbprompt.index import all_vectors, build_index, load_index
from dbprompt.runtime import Runtime
from dbprompt.server import create_app

pytestmark = pytest.mark.slow  # subprocesses and a live server: about a minute

# A user's script building an index with a decoding worker (which inherits the output's lock) and
# checkpoints every 8 images; each batch is announced and slowed, so the test can kill it at a known point.
_BUILDER = """
import sys, time
import dbprompt.index.build as build
from dbprompt.runtime import Runtime
embed, write = build.embed_images, build.write_index
def announced(step, real):
    def run(*args, **kwargs):
        out = real(*args, **kwargs)
        print(step, flush=True)
        time.sleep(0.3)
        return out
    return run
build.embed_images, build.write_index = announced("batch", embed), announced("written", write)
db, prompts, out = sys.argv[1:4]
build.build_index(db, prompts, out, batch_size=4, checkpoint_every=8, runtime=Runtime(workers=1), progress=False)
print("done", flush=True)
"""


def _index(tmp_path, db, prompts, out) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "dbprompt", "index", str(db), "--prompts", str(prompts), "--out", str(out), "--workers", "1"]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)


def _contents(index_dir) -> dict[str, tuple[int, np.ndarray]]:
    index = load_index(index_dir)
    try:
        vectors = all_vectors(index.vectors)
        return {row.key: (row.id, vectors[row.id]) for row in index.all_rows()}
    finally:
        index.close()


@pytest.mark.parametrize("kill_after", [("lock", 0), ("batch", 1), ("batch", 5), ("batch", 10), ("written", 1)])
def test_a_run_killed_with_9_is_followed_at_once_by_a_run_that_equals_a_clean_build(tmp_path, tiny_backbone, kill_after):
    db = write_database(tmp_path / "db", 40, seed=3, image_size=32)
    prompts = make_prompt_file(tmp_path / "p.safetensors", tiny_backbone, seed=4)
    out = tmp_path / "idx"
    builder = subprocess.Popen([sys.executable, "-c", _BUILDER, str(db), str(prompts), str(out)], stdout=subprocess.PIPE, text=True)
    try:
        step, count = kill_after
        if step == "lock":  # the lock is taken, nothing is embedded yet
            while not (tmp_path / ".idx.work" / "lock").exists():
                assert builder.poll() is None, "the build ended before it could be killed"
        else:
            seen = 0
            for line in builder.stdout:
                seen += line.strip() == step
                if seen == count:
                    break
            else:
                pytest.fail(f"the build ended before {count} × {step}")
        os.kill(builder.pid, signal.SIGKILL)
        builder.wait(timeout=30)
    finally:
        builder.kill()
        builder.stdout.close()
    # At once: its decoding worker may still be alive, and must not hold the lock.
    rerun = _index(tmp_path, db, prompts, out)
    assert rerun.returncode == 0, rerun.stderr
    assert not (tmp_path / ".idx.work").exists()
    clean = _index(tmp_path, db, prompts, tmp_path / "clean")
    assert clean.returncode == 0, clean.stderr
    resumed, expected = _contents(out), _contents(tmp_path / "clean")
    assert sorted(resumed) == sorted(expected) and len(expected) == 40
    for key, (row_id, vector) in expected.items():
        assert resumed[key][0] == row_id, key
        np.testing.assert_allclose(resumed[key][1], vector, atol=1e-5)


QUERIES = [f"{colour} {shape}" for colour in ("red", "green", "blue", "yellow", "purple") for shape in ("circle", "square", "cross")]


def test_an_index_rebuilt_three_times_while_served_answers_every_query_from_the_old_or_the_new(tmp_path, tiny_backbone):
    db = write_database(tmp_path / "db", 30, seed=5, image_size=32)
    prompt_files = [make_prompt_file(tmp_path / f"{name}.safetensors", tiny_backbone, seed=seed) for name, seed in (("a", 1), ("b", 2))]
    for name, prompts in zip("ab", prompt_files):
        build_index(db, prompts, tmp_path / name, backbone=tiny_backbone, progress=False)
    build_index(db, prompt_files[0], tmp_path / "live", backbone=tiny_backbone, progress=False)
    app = create_app([tmp_path / "a", tmp_path / "b", tmp_path / "live"], runtime=Runtime(), backbone=tiny_backbone)

    def answer(http: httpx.Client, name: str, query: str) -> list[str]:
        response = http.get(f"/api/databases/{name}/search", params={"q": query, "k": 5})
        response.raise_for_status()
        return [r["key"] for r in response.json()["results"]]

    with running_server(app) as url, httpx.Client(base_url=url, timeout=30) as http:
        expected = {name: {q: answer(http, name, q) for q in QUERIES} for name in "ab"}
        assert expected["a"] != expected["b"]  # the two prompt files rank differently: a mix would show
        rebuilding = threading.Event()
        rebuilding.set()

        def client(worker: int) -> tuple[list[str], set[str]]:
            problems, seen = [], set()
            with httpx.Client(base_url=url, timeout=30) as own:
                j = 0
                while rebuilding.is_set() or j < 20:
                    query = QUERIES[(worker * 5 + j) % len(QUERIES)]
                    j += 1
                    try:
                        keys = answer(own, "live", query)
                    except httpx.HTTPError as exc:
                        problems.append(f"{query}: {exc}")
                        continue
                    which = [name for name in "ab" if expected[name][query] == keys]
                    if not which:
                        problems.append(f"{query}: neither index's answer: {keys}")
                    seen.update(which)
            return problems, seen

        with ThreadPoolExecutor(max_workers=6) as pool:
            clients = [pool.submit(client, w) for w in range(6)]
            for prompts in (prompt_files[1], prompt_files[0], prompt_files[1]):
                build_index(db, prompts, tmp_path / "live", backbone=tiny_backbone, progress=False, force=True)
            rebuilding.clear()
            results = [c.result(timeout=120) for c in clients]
        assert [p for problems, _ in results for p in problems] == []
        assert set().union(*(seen for _, seen in results)) == {"a", "b"}
        assert all(answer(http, "live", q) == expected["b"][q] for q in QUERIES)  # the last rebuild is served


def test_between_the_two_renames_of_a_rebuild_the_open_index_still_answers(tmp_path, tiny_backbone):
    """`dbprompt index` moves the old index aside, then the new one in: a request in between is answered."""
    db = write_database(tmp_path / "db", 8, seed=6, image_size=32)
    prompts = make_prompt_file(tmp_path / "p.safetensors", tiny_backbone, seed=1)
    build_index(db, prompts, tmp_path / "live", backbone=tiny_backbone, progress=False)
    app = create_app([tmp_path / "live"], runtime=Runtime(), backbone=tiny_backbone)
    with running_server(app) as url, httpx.Client(base_url=url, timeout=30) as http:
        before = http.get("/api/databases/live/search", params={"q": "red circle"}).json()["results"]
        os.replace(tmp_path / "live", tmp_path / ".live.old")
        response = http.get("/api/databases/live/search", params={"q": "red circle"})
        assert response.status_code == 200 and response.json()["results"] == before
        os.replace(tmp_path / ".live.old", tmp_path / "live")
        assert http.get("/api/databases/live/search", params={"q": "red circle"}).json()["results"] == before
