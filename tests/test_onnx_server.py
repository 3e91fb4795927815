"""A server on ONNX towers alone: the export's own tokenizer and image preprocessing, and no torch imported.

The tokenizers and preprocessing are checked against the backbone's own (ids equal, pixels within bicubic
rounding), and a server in a fresh process answers text and image queries as the PyTorch server does
without ever importing torch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from fastapi.testclient import TestClient
from open_clip.tokenizer import SimpleTokenizer, default_bpe
from PIL import Image
from search_fixtures import make_prompt_file
from test_hf_backbone import save_clip, save_siglip
from test_onnx_runtime import captions, index
from tinydata import write_database

from dbprompt.backbones import load_backbone
from dbprompt.cli import main
from dbprompt.index.onnx_queries import OnnxQueries
from dbprompt.model import PromptedCLIP
from dbprompt.onnx.manifest import read_export_manifest
from dbprompt.onnx.pixels import _hugging_face, export_pixels, hf_preprocessing
from dbprompt.onnx.tokens import ClipBpe, export_tokenizer
from dbprompt.prompts import PromptConfig
from dbprompt.runtime import Runtime
from dbprompt.searcher import open_index
from dbprompt.server import create_app

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

TEXTS = [
    "a red circle on a grey background.", "Hello, World!! it's 3.14, don't — café naïve 東京 &amp; <b>bold</b>",
    "  spaces\tand\nnewlines  ", "", " ".join(["word"] * 90), "emoji 😀🐍 and ＦＵＬＬＷＩＤＴＨ", "<start_of_text> odd",
]
# Sizes around the crop: landscape, portrait, odd, smaller than it (upscaled), already its size.
ONNX = Runtime(engine="onnx")
SIZES = [(64, 48), (37, 91), (33, 33), (20, 13), (32, 32), (300, 120)]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("onnx-server")
    db = write_database(root / "shapes", 40, seed=0, image_size=32)
    prompts = make_prompt_file(root / "p.safetensors", load_backbone("dbprompt-tiny"), seed=1)
    assert index(db, prompts, root / "onnx", "--runtime", "onnx", "--precision", "fp32") == 0
    model = PromptedCLIP.from_prompt_file(prompts, load_backbone("dbprompt-tiny"))
    return db, model, read_export_manifest(root / "onnx" / "onnx"), root / "onnx"


def test_the_bpe_port_gives_open_clip_s_ids_at_any_length():
    for length in (77, 8):
        assert np.array_equal(ClipBpe(default_bpe(), length)(TEXTS), SimpleTokenizer()(TEXTS, context_length=length).numpy())


def test_an_export_tokenizes_as_its_backbone(built, tmp_path):
    _, model, manifest, _ = built
    assert np.array_equal(export_tokenizer(manifest)(TEXTS), model.tokenize(TEXTS).numpy())
    hf = PromptedCLIP.for_captions(load_backbone(f"hf:{save_clip(tmp_path / 'clip', tokenizer=True)}"), PromptConfig(), TEXTS).eval()
    hf_manifest = hf.export_onnx(tmp_path / "export")
    assert hf_manifest.tokenizer["kind"] == "huggingface"
    assert np.array_equal(export_tokenizer(hf_manifest)(TEXTS), hf.tokenize(TEXTS).numpy())


def test_a_backbone_given_serves_through_it_and_answers_alike(built):
    db, model, _, onnx_index = built
    queries = captions(db, 6)
    with open_index(onnx_index, runtime=ONNX) as alone, open_index(onnx_index, runtime=ONNX, backbone=model.backbone) as given:
        assert isinstance(alone._queries, OnnxQueries) and given.model is not None
        assert [[h.image.key for h in alone.search(q, 10)] for q in queries] == [[h.image.key for h in given.search(q, 10)] for q in queries]


def test_an_export_preprocesses_images_as_its_backbone(built):
    _, model, manifest, _ = built
    pixels, transform = export_pixels(manifest), model.backbone.image_transform()
    rng = np.random.default_rng(0)
    for size in SIZES:
        image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
        assert np.abs(pixels(image) - transform(image).numpy()).max() <= 1e-2, size


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_an_export_preprocesses_images_as_its_hugging_face_processor(family, tmp_path):
    folder = save_clip(tmp_path / "clip", tokenizer=True) if family == "clip" else save_siglip(tmp_path / "siglip", ["a", "b"])
    model = PromptedCLIP.for_captions(load_backbone(f"hf:{folder}"), PromptConfig(), ["a", "b"]).eval()
    manifest = model.export_onnx(tmp_path / "export")
    assert manifest.image_processor["kind"] == "huggingface-torchvision"
    assert manifest.image_processor["crop"] == ([32, 32] if family == "clip" else None)
    pixels, processor = export_pixels(manifest), model.backbone.image_transform()
    rng = np.random.default_rng(1)
    for size in [*SIZES, (1, 40), (517, 389)]:
        for mode in ("RGB", "RGBA", "L"):  # as the processor converts them: alpha onto white, grey to RGB
            image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 4), dtype=np.uint8)).convert(mode)
            assert np.abs(pixels(image) - processor(image).numpy()).max() <= 1e-5, (size, mode)


def test_a_processor_of_other_settings_is_left_to_the_backbone():
    from transformers import CLIPImageProcessor, CLIPImageProcessorPil

    from dbprompt.backbones.hf_loading import _Pixels

    assert hf_preprocessing(_Pixels(CLIPImageProcessor(resample=0))) == {}  # nearest: not followed here
    assert hf_preprocessing(_Pixels(CLIPImageProcessor(size={"longest_edge": 64}))) == {}
    assert hf_preprocessing(_Pixels(CLIPImageProcessorPil())) == {}  # PIL's resize: another arithmetic
    record = hf_preprocessing(_Pixels(CLIPImageProcessor()))
    assert record["resize"] == {"shortest_edge": 224} and record["resample"] == "bicubic"
    assert _hugging_face(record, [224, 224]) is not None and _hugging_face(record, [32, 32]) is None
    assert _hugging_face(record | {"crop": [224, 10**6]}, [224, 10**6]) is None  # sizes bounded: a manifest may come from anyone


def keys(answer: dict) -> list[str]:
    return [r["key"] for r in answer["results"]]


SERVE = """
import json, sys
from fastapi.testclient import TestClient
from dbprompt.runtime import Runtime
from dbprompt.searcher import open_index
from dbprompt.server import create_app
index, queries, image = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
with TestClient(create_app([index], runtime=Runtime(engine="onnx"))) as client:
    texts = [client.get("/api/databases/onnx/search", params={"q": q, "k": 10}).json() for q in queries]
    with open(image, "rb") as f:
        images = client.post("/api/databases/onnx/search/image", params={"k": 10}, files={"image": f}).json()
print(json.dumps({"torch": "torch" in sys.modules, "texts": texts, "image": images}))
"""


@pytest.fixture(scope="module")
def hf_built(built, tmp_path_factory):
    """The same database indexed with --runtime onnx through a random-weight Hugging Face CLIP."""
    db, root = built[0], tmp_path_factory.mktemp("onnx-server-hf")
    model = f"hf:{save_clip(root / 'clip', tokenizer=True)}"
    prompts = make_prompt_file(root / "p.safetensors", load_backbone(model), seed=1)
    assert index(db, prompts, root / "hf" / "onnx", "--runtime", "onnx", "--precision", "fp32", "--model", model) == 0
    return db, root / "hf" / "onnx", model


def onnx_built(family: str, request) -> tuple:
    """(database, index built with --runtime onnx, the backbone to name for PyTorch: a path is never loaded unnamed)."""
    db, _, _, onnx_index = request.getfixturevalue("built")
    return (db, onnx_index, None) if family == "open_clip" else request.getfixturevalue("hf_built")


@pytest.mark.parametrize("family", ["open_clip", "hugging_face"])
def test_a_server_on_onnx_towers_never_imports_torch_and_answers_as_pytorch(family, request):
    db, onnx_index, model = onnx_built(family, request)
    queries = captions(db, 6)
    image = db / "images" / sorted(os.listdir(db / "images"))[5]
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(SERVE), str(onnx_index), json.dumps(queries), str(image)],
        capture_output=True, text=True, check=True,
    )
    served = json.loads(out.stdout.splitlines()[-1])
    print("torch imported by the ONNX server:", served["torch"])
    assert served["torch"] is False
    backbone = load_backbone(model) if model else None
    with TestClient(create_app([onnx_index], runtime=Runtime(), backbone=backbone)) as client:  # the torch engine, on the same index
        want = [client.get("/api/databases/onnx/search", params={"q": q, "k": 10}).json() for q in queries]
        with open(image, "rb") as f:
            want_image = client.post("/api/databases/onnx/search/image", params={"k": 10}, files={"image": f}).json()
    assert [keys(a) for a in served["texts"]] == [keys(a) for a in want]
    assert keys(served["image"]) == keys(want_image) and keys(want_image)[0] == f"images/{image.name}"


SEARCH = """
import json, sys
from dbprompt.cli import main
code = main(sys.argv[1:] + ["--runtime", "onnx", "--json"])
print(json.dumps({"torch": "torch" in sys.modules, "code": code}))
"""


@pytest.mark.parametrize("family", ["open_clip", "hugging_face"])
def test_cli_search_on_onnx_towers_never_imports_torch_and_answers_as_pytorch(family, request, capsys):
    db, onnx_index, model = onnx_built(family, request)
    image = db / "images" / sorted(os.listdir(db / "images"))[5]
    for query in ([captions(db, 1)[0]], ["--image", str(image)]):
        out = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(SEARCH), "search", str(onnx_index), *query], capture_output=True, text=True, check=True,
        )
        lines = out.stdout.splitlines()
        assert json.loads(lines[-1]) == {"torch": False, "code": 0}, out.stderr
        capsys.readouterr()
        named = ["--model", model] if model else []
        assert main(["search", str(onnx_index), *query, *named, "--json"]) == 0  # the torch engine, on the same index
        want = json.loads(capsys.readouterr().out)
        assert keys(json.loads("\n".join(lines[:-1]))) == keys(want) and len(keys(want)) == 10
