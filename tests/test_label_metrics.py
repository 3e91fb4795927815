"""Databases whose captions repeat (class folders, tags): label-level metrics, and epochs chosen by them."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from tinydata import SHAPES

from dbprompt.cli import main
from dbprompt.evaluation import selection_key
from dbprompt.metrics import label_metrics
from dbprompt.storage import read_prompt_file


def test_label_metrics_written_out_with_ties_against_the_query():
    images = torch.eye(3)
    texts = torch.tensor([[1.0, 0, 0], [0.9, 0.1, 0], [0, 0, 1.0]])
    got = label_metrics(texts, images, ["a star", "A  star", "a circle"], [["a star"], ["a  Star"], ["a circle", "round"]])
    # "a star" (its first caption queries) ranks image 0 first, then images 1 (relevant) and 2 tied at 0:
    # the irrelevant one first. AP (1 + 2/3) / 2; MAP@R over the first R = 2: 1 / 2; P@3 2/3. "a circle": 1, 1, 1/3.
    assert got["label/t2i_mAP"] == pytest.approx(100 * (5 / 6 + 1) / 2)
    assert got["label/t2i_mAP@R"] == pytest.approx(100 * (1 / 2 + 1) / 2)
    assert got["label/t2i_P@10"] == pytest.approx(100 * (2 / 3 + 1 / 3) / 2)
    assert got["label/shared"] == pytest.approx(50.0)


def test_epochs_are_chosen_by_map_only_where_most_captions_are_shared():
    assert selection_key({"label/shared": 80.0}) == "label/t2i_mAP"
    assert selection_key({"label/shared": 2.0}) == "clip_benchmark/t2i_R@1"
    assert selection_key({}) == "clip_benchmark/t2i_R@1"


@pytest.fixture(scope="module")
def class_folders(tiny_db, tmp_path_factory):
    """The tiny database with one caption per image, its shape's class text: what a folder per class gives."""
    db = tmp_path_factory.mktemp("classes") / "shapes"
    shutil.copytree(tiny_db, db)
    rows = [json.loads(line) for line in (db / "metadata.jsonl").read_text().splitlines()]
    for row in rows:
        shape = next(s for s in SHAPES if s in row["text"][0])
        row["text"] = [f"a photo of a {shape}"]
    (db / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return db


def test_train_and_eval_on_class_folders_report_label_metrics(class_folders, tmp_path, capsys, epochs_chosen_on_tiny_validation):
    out = tmp_path / "p.safetensors"
    args = ["train", str(class_folders), "--out", str(out), "--epochs", "2", "--batch-size", "8", "--no-progress",
            "--model", "dbprompt-tiny", "--pretrained", "random", "--text-len", "2", "--visual-len", "2", "--val-fraction", "0.3", "--test-fraction", "0.3"]
    assert main(args) == 0
    printed = capsys.readouterr()
    assert "epochs chosen by mAP" in printed.err and "by validation mAP" in printed.out
    history = read_prompt_file(out).extra["history"]
    assert all(h["selected_by"] == "label/t2i_mAP" for h in history)
    assert all(h["val_score"] == pytest.approx(h["label/t2i_mAP"], abs=0.1) for h in history)  # R-sum only breaks ties
    assert main(["eval", str(class_folders), "--prompts", str(out)]) == 0
    table = capsys.readouterr().out
    assert "label/t2i_mAP" in table and "clip_benchmark/t2i_R@1†" in table and "† most captions are shared" in table
    assert main(["eval", str(class_folders), "--prompts", str(out), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert all(0 <= row["label/t2i_mAP"] <= 100 and row["label/shared"] >= 50 for row in rows.values())


def test_unique_captions_keep_recall_alone(tiny_db, tmp_path, capsys, epochs_chosen_on_tiny_validation):
    out = tmp_path / "p.safetensors"
    args = ["train", str(tiny_db), "--out", str(out), "--epochs", "1", "--batch-size", "8", "--no-progress",
            "--model", "dbprompt-tiny", "--pretrained", "random", "--text-len", "2", "--visual-len", "2"]
    assert main(args) == 0
    assert all(h["selected_by"] == "clip_benchmark/t2i_R@1" for h in read_prompt_file(out).extra["history"])
    capsys.readouterr()
    assert main(["eval", str(tiny_db), "--prompts", str(out)]) == 0
    assert "label/" not in capsys.readouterr().out


def test_validation_counts_only_its_own_images_as_relevant(class_folders, tiny_backbone):
    """Validation's distractors are training images, which a trained model knows by heart: counted
    relevant they inflate validation mAP (67 beside a held-out 25, measured); they only make R@K harder."""
    from dbprompt.data.database import load_database
    from dbprompt.evaluation import score
    from dbprompt.model import PromptedCLIP
    from dbprompt.prompts.config import PromptConfig

    records = load_database(class_folders).records[:12]
    model = PromptedCLIP.for_captions(tiny_backbone, PromptConfig(text_len=2, visual_len=2), [c for r in records for c in r.captions])
    own = torch.nn.functional.normalize(torch.randn(len(records), tiny_backbone.embed_dim, generator=torch.Generator().manual_seed(0)), dim=-1)
    texts = model.encode_texts([r.captions[0] for r in records]).detach()
    alone = score(model, records, own)
    crowded = score(model, records, torch.cat([own, texts]))  # distractors matching every query exactly
    assert {k: v for k, v in crowded.items() if k.startswith("label/")} == {k: v for k, v in alone.items() if k.startswith("label/")}
    assert crowded["clip_benchmark/t2i_R@1"] <= alone["clip_benchmark/t2i_R@1"]


def test_report_shows_label_metrics_and_outlines_every_image_with_the_query_text(class_folders, tmp_path, capsys):
    import re

    report = tmp_path / "report"
    args = ["eval", str(class_folders), "--model", "dbprompt-tiny", "--pretrained", "random", "--split", "all", "--report", str(report)]
    assert main(args) == 0
    capsys.readouterr()
    page = (report / "index.html").read_text()
    assert "Label-level retrieval" in page and "most captions are shared" in page and "R@1†" in page
    queries = re.findall(r"<h3>“(.*?)”</h3>", page)
    assert len(queries) == len(set(queries)) == len(SHAPES)  # each class text once
    # Every image of a class has the query's text: with ~1/6 of the split per class, the top 5 outline some.
    assert page.count('class="hit"') > 0 and "first image with this text: rank" in page
