"""An export's image preprocessing without torch: what a server running ONNX towers turns an image query into
pixels with.

It is read from what the manifest records of the backbone's transform, and done here with PIL and numpy:
  * open_clip's evaluation transform (shorter side resized bicubic, center crop, RGB, scaled to [0, 1],
    normalised), as torchvision does it on PIL images, from the transform's repr;
  * a Hugging Face image processor on transformers' torchvision backend (CLIP's, SigLIP's: RGB, resized by
    shortest edge or to a fixed size, bicubic or bilinear, center crop, rescaled, normalised), from the settings
    the export records (`image_processor`, hf_preprocessing), with torch's uint8 resize done step by step, so the
    pixels equal the processor's within float rounding (tests/test_onnx_server.py).
Any other gives None: the backbone, and so torch, preprocesses.
"""

from __future__ import annotations

import re
from typing import Any, Callable

import numpy as np
from PIL import Image

from .manifest import ExportManifest

Pixels = Callable[[Image.Image], np.ndarray]  # an image -> [3, H, W] float32
OPEN_CLIP_EVAL = re.compile(
    r"Compose\(\s*Resize\(size=(\d+), interpolation=bicubic, max_size=None, antialias=True\)\s*"
    r"CenterCrop\(size=\((\d+), (\d+)\)\)\s*(?:MaybeConvertMode\(\)|<function _convert_to_rgb at \w+>)\s*"
    r"(?:MaybeToTensor\(\)|ToTensor\(\))\s*Normalize\(mean=\([^)]*\), std=\([^)]*\)\)\s*\)"
)


def export_pixels(manifest: ExportManifest) -> Pixels | None:
    """The preprocessing of the export's image tower, where the manifest says exactly what it is."""
    if manifest.image_processor:
        return _hugging_face(manifest.image_processor, manifest.image_size)
    found = OPEN_CLIP_EVAL.fullmatch(manifest.transform.strip())
    if found is None or manifest.mean is None or manifest.std is None:
        return None
    short, height, width = (int(v) for v in found.groups())
    if [height, width] != list(manifest.image_size):
        return None
    mean = np.asarray(manifest.mean, dtype=np.float32)[:, None, None]
    std = np.asarray(manifest.std, dtype=np.float32)[:, None, None]

    def pixels(image: Image.Image) -> np.ndarray:
        image = _resize_shorter(image.convert("RGB"), short)
        top, left = round((image.height - height) / 2), round((image.width - width) / 2)
        if top < 0 or left < 0:
            raise ValueError(f"an image of {image.width}x{image.height} after resizing is smaller than the {width}x{height} crop")
        crop = np.asarray(image.crop((left, top, left + width, top + height)), dtype=np.float32) / 255.0
        return (crop.transpose(2, 0, 1) - mean) / std

    return pixels


def _resize_shorter(image: Image.Image, short: int) -> Image.Image:
    """torchvision's Resize(short) on a PIL image: the shorter side to `short`, the longer in proportion (floored)."""
    w, h = image.size
    size = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
    return image if size == (w, h) else image.resize(size, Image.BICUBIC)


# Hugging Face image processors: torchvision's arithmetic on uint8 tensors, followed step by step.
HF_KIND = "huggingface-torchvision"
RESAMPLE = {2: "bilinear", 3: "bicubic"}  # PIL's numbers, as processors give them
MAX_SIDE = 8192
_STEPS = ("process_image", "resize", "center_crop", "rescale_and_normalize", "_preprocess")


def hf_preprocessing(transform: Any) -> dict[str, Any]:
    """At export: what a Hugging Face image processor does (the backbone's transform wraps it, backbones/hf_loading.py),
    recorded where it is the plain torchvision pipeline this module follows (RGB, resize by shortest edge or to a
    fixed size, bicubic or bilinear, center crop, rescale, normalise); {} for any other, served through the backbone."""
    p = getattr(transform, "processor", None)
    if p is None or getattr(p, "backend", None) != "torchvision" or getattr(p, "do_pad", None) or not p.do_convert_rgb:
        return {}
    if any(getattr(type(p), step).__qualname__ != f"TorchvisionBackend.{step}" for step in _STEPS if hasattr(type(p), step)):
        return {}  # a processor of its own arithmetic
    size = _sides(p.size) if p.do_resize else {}
    crop = _sides(p.crop_size) if p.do_center_crop else {}
    if (size and set(size) not in ({"shortest_edge"}, {"height", "width"})) or (crop and set(crop) != {"height", "width"}):
        return {}
    if int(p.resample) not in RESAMPLE:
        return {}
    return {
        "kind": HF_KIND, "resize": size, "resample": RESAMPLE[int(p.resample)],
        "crop": [crop["height"], crop["width"]] if crop else None,
        "rescale": float(p.rescale_factor) if p.do_rescale else None,
        "mean": [float(v) for v in p.image_mean] if p.do_normalize else None,
        "std": [float(v) for v in p.image_std] if p.do_normalize else None,
    }


def _sides(size: Any) -> dict[str, int]:
    """The sizes a processor's SizeDict (or dict) sets."""
    items = size.items() if isinstance(size, dict) else vars(size or {}).items()
    return {k: int(v) for k, v in items if v is not None}


def _hugging_face(record: dict[str, Any], image_size: list[int]) -> Pixels | None:
    """The pixels of an HF processor's record, as its processor computes them (within float rounding); None for a
    record this module cannot follow or whose output is not the tower's input size."""
    try:
        resize, crop, resample = dict(record["resize"]), record["crop"], RESAMPLE_FILTERS[record["resample"]]
        sides = [*resize.values(), *(crop or [])]
        if record["kind"] != HF_KIND or set(resize) not in (set(), {"shortest_edge"}, {"height", "width"}):
            return None
        if not all(type(v) is int and 0 < v <= MAX_SIDE for v in sides) or (crop is not None and len(crop) != 2):
            return None
        out = list(crop) if crop else [resize.get("height"), resize.get("width")]
        mean, std, rescale = record["mean"], record["std"], record["rescale"]
        scale = np.float32(1.0 / rescale) if rescale else np.float32(1.0)
        if mean is not None:  # rescale and normalise fused, as the processor does
            mean = np.asarray(mean, dtype=np.float32).reshape(3, 1, 1) * scale
            std = np.asarray(std, dtype=np.float32).reshape(3, 1, 1) * scale
    except (KeyError, TypeError, ValueError):
        return None
    if out != list(image_size):
        return None

    def pixels(image: Image.Image) -> np.ndarray:
        a = np.asarray(_rgb(image))
        if resize:
            h, w = a.shape[:2]
            if "shortest_edge" in resize:
                short = resize["shortest_edge"]
                h, w = (int(short * h / w), short) if w <= h else (short, int(short * w / h))
            else:
                h, w = resize["height"], resize["width"]
            a = _resize(a, h, w, *resample)
        if crop:
            a = _center_crop(a, *crop)
        x = a.transpose(2, 0, 1).astype(np.float32)
        if mean is not None:
            return (x - mean) / std
        return x * np.float32(rescale) if rescale else x

    return pixels


def _rgb(image: Image.Image) -> Image.Image:
    """transformers' convert_to_rgb: transparency composited onto white."""
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        image = Image.alpha_composite(Image.new("RGBA", image.size, (255, 255, 255, 255)), image.convert("RGBA"))
    return image.convert("RGB")


def _cubic(x: np.ndarray, a: float = -0.5) -> np.ndarray:
    """Keys' cubic with Pillow's a = -0.5, written as torch's antialiasing filter writes it (the same rounding)."""
    x = np.abs(x)
    return np.where(x < 1, ((a + 2) * x - (a + 3)) * x * x + 1, np.where(x < 2, ((a * x - 5 * a) * x + 8 * a) * x - 4 * a, 0.0))


def _linear(x: np.ndarray) -> np.ndarray:
    return np.maximum(1 - np.abs(x), 0.0)


RESAMPLE_FILTERS = {"bicubic": (_cubic, 2.0), "bilinear": (_linear, 1.0)}


def _resize(a: np.ndarray, height: int, width: int, kernel: Callable[[np.ndarray], np.ndarray], support: float) -> np.ndarray:
    """torch's antialiased resize of a uint8 image [H, W, C] (what torchvision runs on CPU): the width then the
    height, each pass in int16 fixed point, rounded and clamped to uint8 between them."""
    if a.shape[1] != width:
        a = _pass(a, 1, width, kernel, support)
    if a.shape[0] != height:
        a = _pass(a, 0, height, kernel, support)
    return a


def _pass(a: np.ndarray, axis: int, size: int, kernel: Callable[[np.ndarray], np.ndarray], support: float) -> np.ndarray:
    start, weights, precision = _taps(a.shape[axis], size, kernel, support)
    shape = [1] * a.ndim
    shape[axis] = size
    total = np.full([*a.shape[:axis], size, *a.shape[axis + 1 :]], 1 << (precision - 1), dtype=np.int32)
    last = a.shape[axis] - 1
    for k in range(weights.shape[1]):  # tap k of every output at once, gathered from the uint8 image
        total += np.take(a, np.minimum(start + k, last), axis=axis) * weights[:, k].reshape(shape)
    return np.clip(total >> precision, 0, 255).astype(np.uint8)


def _taps(n_in: int, n_out: int, kernel: Callable[[np.ndarray], np.ndarray], support: float) -> tuple[np.ndarray, np.ndarray, int]:
    """Each output's first input, its int16 weights (zero past its window) and their precision in bits, as torch's
    _compute_index_ranges_int16_weights (Pillow's windows, weights normalised then scaled to 15 bits)."""
    scale = n_in / n_out
    reach = support * scale if scale >= 1 else support
    inverse = 1 / scale if scale >= 1 else 1.0
    starts, rows = [], []
    for i in range(n_out):
        center = scale * (i + 0.5)
        lo = max(int(center - reach + 0.5), 0)
        w = kernel((np.arange(min(int(center + reach + 0.5), n_in) - lo) + lo - center + 0.5) * inverse)
        starts.append(lo)
        rows.append(w / w.sum() if w.sum() != 0 else w)
    top = max(float(w.max()) for w in rows if w.size)
    precision = next((p for p in range(22) if int(0.5 + top * (1 << (p + 1))) >= 1 << 15), 22)
    weights = np.zeros((n_out, max(len(w) for w in rows)), dtype=np.int32)
    for row, w in zip(weights, rows):
        row[: len(w)] = np.trunc(w * (1 << precision) + np.where(w < 0, -0.5, 0.5))
    return np.asarray(starts), weights, precision


def _center_crop(a: np.ndarray, height: int, width: int) -> np.ndarray:
    """torchvision's center crop in transformers: zero padding first where the image is smaller, then the crop."""
    h, w = a.shape[:2]
    if height > h or width > w:
        top, left = max(height - h, 0) // 2, max(width - w, 0) // 2
        a = np.pad(a, ((top, max(height - h, 0) - top), (left, max(width - w, 0) - left), (0, 0)))
        h, w = a.shape[:2]
    top, left = int((h - height) / 2.0), int((w - width) / 2.0)
    return a[top : top + height, left : left + width]
