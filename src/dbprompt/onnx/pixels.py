"""An export's image preprocessing without torch: what a server running ONNX towers turns an image query into
pixels with.

It is read from what the manifest records of the backbone's transform, and only open_clip's evaluation transform
is recognised (shorter side resized bicubic, center crop, RGB, scaled to [0, 1], normalised), done here with PIL
and numpy as torchvision does it on PIL images; any other gives None (the backbone, and so torch, preprocesses).
"""

from __future__ import annotations

import re
from typing import Callable

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
