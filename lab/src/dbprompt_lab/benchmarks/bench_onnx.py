"""Prompted towers on PyTorch eager vs ONNX Runtime (fp32, int8), side by side in one run.

    python -m dbprompt_lab.benchmarks.bench_onnx [--models ViT-B-32 dbprompt-proxy] [--images 384] [--queries 20]
        [--threads 1 2] [--batch 64] [--openvino] [--json]

For each model (ViT-B-32 with random weights; the proxy with its shipped ones) with dbprompt's default
prompts perturbed from zero (so that gates, offsets and adapters act), on the synthetic world's images:
  * images/s of the prompted image tower: PyTorch eager fp32, ONNX Runtime fp32, ONNX Runtime int8
    (dynamic quantization of the weights), at each thread count;
  * one-query text latency (median over the queries), PyTorch vs ONNX Runtime;
  * top-10 text->image agreement with PyTorch fp32 over the queries (|top-10 ∩ PyTorch's top-10| / 10),
    for ONNX Runtime fp32 and int8 (the int8 run keeps the fp32 text tower), with the median score gap
    between each query's 10th and 11th image, which says how small an error reorders a top-10.
  * with --openvino (`pip install openvino`): the same fp32 image tower compiled by OpenVINO, at its fp32 and
    its bf16 inference precision (bf16 where the CPU has it: AVX512-BF16 or AMX), images/s and agreement.
Targets (issue 27): int8 at 2 threads >= 2.0x PyTorch's images/s on ViT-B-32, agreement >= 0.95.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from dbprompt.backbones import RANDOM, BackboneAdapter, load_backbone
from dbprompt.model import PromptedCLIP
from dbprompt.onnx import OnnxTowers
from dbprompt.onnx.manifest import IMAGE
from dbprompt.prompts import PromptConfig
from dbprompt_lab.world.samples import generate

DEFAULT_MODELS = ("ViT-B-32", "dbprompt-proxy")
TOP = 10


def prompted_model(backbone: BackboneAdapter, captions: list[str], seed: int = 0) -> PromptedCLIP:
    """dbprompt's default prompts for these captions, every part moved off zero (so that all of them act)."""
    model = PromptedCLIP.for_captions(backbone, PromptConfig(), captions).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.prompts.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.05)
    return model


def images_per_second(encode: Callable[[np.ndarray], np.ndarray], pixels: np.ndarray, batch: int) -> tuple[float, np.ndarray]:
    """Every image once in batches, after one warm-up batch; (images/s, features)."""
    encode(pixels[:batch])
    start = time.perf_counter()
    features = np.concatenate([encode(pixels[i : i + batch]) for i in range(0, len(pixels), batch)])
    return len(pixels) / (time.perf_counter() - start), features


def one_query_seconds(encode: Callable[[np.ndarray], np.ndarray], ids: np.ndarray) -> tuple[float, np.ndarray]:
    """Median seconds of encoding one query at a time (after one warm-up); (seconds, features)."""
    encode(ids[:1])
    times, features = [], []
    for row in ids:
        start = time.perf_counter()
        features.append(encode(row[None]))
        times.append(time.perf_counter() - start)
    return statistics.median(times), np.concatenate(features)


def agreement(texts: np.ndarray, images: np.ndarray, ref_texts: np.ndarray, ref_images: np.ndarray) -> float:
    """Mean share of each query's top-10 images that PyTorch's fp32 top-10 has too."""
    top = np.argsort(-(texts @ images.T), axis=1)[:, :TOP]
    ref = np.argsort(-(ref_texts @ ref_images.T), axis=1)[:, :TOP]
    return float(np.mean([len(set(a) & set(b)) / TOP for a, b in zip(top, ref, strict=True)]))


def rank_gap(texts: np.ndarray, images: np.ndarray) -> float:
    """Median score gap between each query's 10th and 11th image: how small a change reorders a top-10
    (random weights score images nearly alike, so any int8 error there reorders them)."""
    scores = -np.sort(-(texts @ images.T), axis=1)
    return float(np.median(scores[:, TOP - 1] - scores[:, TOP]))


def openvino_images(path: Path, threads: int, precision: str) -> Callable[[np.ndarray], np.ndarray]:
    """OpenVINO's CPU plugin on an exported image tower at an inference precision ("f32", "bf16"): unit features."""
    try:
        import openvino
    except ImportError:
        raise SystemExit("--openvino needs OpenVINO: pip install openvino") from None
    config = {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY"}
    request = openvino.Core().compile_model(str(path), "CPU", config).create_infer_request()

    def encode(pixels: np.ndarray) -> np.ndarray:
        features = next(iter(request.infer({0: np.ascontiguousarray(pixels, dtype=np.float32)}).values()))
        return features / np.linalg.norm(features, axis=1, keepdims=True)

    return encode


def openvino_precisions() -> list[str]:
    """OpenVINO's inference precisions on this CPU worth timing: fp32, and bf16 where the CPU computes in it."""
    import openvino

    return ["f32"] + (["bf16"] if "BF16" in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES") else [])


def measure(name: str, n_images: int, n_queries: int, threads: list[int], batch: int, work: Path, openvino: bool = False) -> dict:
    """Every figure for one model, in this process (torch's and ONNX Runtime's thread counts set per row)."""
    backbone = load_backbone(name, None if name == "dbprompt-proxy" else RANDOM)  # random weights unless shipped
    samples = generate(n_images, image_size=backbone.image_size[0], seed=1)
    model = prompted_model(backbone, [c for _, cs in samples for c in cs])
    transform = model.backbone.image_transform()
    pixels = torch.stack([transform(Image.fromarray(image)) for image, _ in samples]).numpy()
    step = max(1, len(samples) // n_queries)
    ids = model.tokenize([cs[0] for _, cs in samples[::step][:n_queries]]).numpy()
    start = time.perf_counter()
    model.export_onnx(work / name, int8=True)
    export_s = time.perf_counter() - start

    def torch_images(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model.encode_image(torch.from_numpy(x)).numpy()

    def torch_texts(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model.encode_text(torch.from_numpy(x)).numpy()

    rows = []
    for count in threads:
        torch.set_num_threads(count)
        fp32, int8 = OnnxTowers.open(work / name, threads=count), OnnxTowers.open(work / name, int8=True, threads=count)
        ref_ips, ref_images = images_per_second(torch_images, pixels, batch)
        ref_text_s, ref_texts = one_query_seconds(torch_texts, ids)
        fp32_ips, fp32_images = images_per_second(fp32.encode_images, pixels, batch)
        fp32_text_s, fp32_texts = one_query_seconds(fp32.encode_texts, ids)
        int8_ips, int8_images = images_per_second(int8.encode_images, pixels, batch)
        row = {
            "threads": count, "torch_images_s": ref_ips, "ort_fp32_images_s": fp32_ips, "ort_int8_images_s": int8_ips,
            "torch_text_ms": 1e3 * ref_text_s, "ort_text_ms": 1e3 * fp32_text_s,
            "agreement_fp32": agreement(fp32_texts, fp32_images, ref_texts, ref_images),
            "agreement_int8": agreement(fp32_texts, int8_images, ref_texts, ref_images),
            "max_abs_diff_fp32": float(np.abs(fp32_images - ref_images).max()),
            "int8_min_cosine": float((int8_images * fp32_images).sum(axis=1).min()),
            "rank_gap": rank_gap(ref_texts, ref_images),
        }
        for precision in openvino_precisions() if openvino else []:
            ov_ips, ov_images = images_per_second(openvino_images(work / name / IMAGE, count, precision), pixels, batch)
            row |= {f"ov_{precision}_images_s": ov_ips, f"agreement_ov_{precision}": agreement(fp32_texts, ov_images, ref_texts, ref_images)}
        rows.append(row)
    return {"model": name, "images": n_images, "queries": len(ids), "batch": batch, "export_s": export_s, "rows": rows}


def table(results: list[dict]) -> str:
    head = (f"{'model':<16}{'thr':>4}{'torch img/s':>13}{'ORT fp32':>16}{'ORT int8':>16}"
            f"{'text ms torch/ORT':>20}{'top-10 agr fp32/int8':>22}")
    lines = [head]
    for r in results:
        for row in r["rows"]:
            ref = row["torch_images_s"]
            lines.append(
                f"{r['model']:<16}{row['threads']:>4}{ref:>13.1f}"
                f"{row['ort_fp32_images_s']:>9.1f} ({row['ort_fp32_images_s'] / ref:.2f}x)"
                f"{row['ort_int8_images_s']:>9.1f} ({row['ort_int8_images_s'] / ref:.2f}x)"
                f"{row['torch_text_ms']:>11.1f} / {row['ort_text_ms']:<6.1f}"
                f"{row['agreement_fp32']:>13.3f} / {row['agreement_int8']:.3f}"
                + "".join(
                    f"   OpenVINO {p}: {row[f'ov_{p}_images_s']:.1f} ({row[f'ov_{p}_images_s'] / ref:.2f}x) agr {row[f'agreement_ov_{p}']:.3f}"
                    for p in ("f32", "bf16") if f"ov_{p}_images_s" in row
                )
            )
    notes = [
        f"{r['model']}: {r['images']} images, {r['queries']} queries, batch {r['batch']}, export {r['export_s']:.0f} s; "
        f"int8 features' min cosine to fp32 {r['rows'][0]['int8_min_cosine']:.5f}; median score gap between a query's "
        f"10th and 11th image {r['rows'][0]['rank_gap']:.5f}"
        for r in results
    ]
    return "\n".join(lines + notes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS))
    parser.add_argument("--images", type=int, default=384)
    parser.add_argument("--queries", type=int, default=20)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--openvino", action="store_true", help="also time the image tower on OpenVINO (pip install openvino)")
    parser.add_argument("--json", action="store_true", help="one JSON object instead of the table")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_onnx.") as work:
        results = [measure(m, args.images, args.queries, args.threads, args.batch, Path(work), args.openvino) for m in args.models]
    print(json.dumps(results, indent=2) if args.json else table(results))


if __name__ == "__main__":
    main()
