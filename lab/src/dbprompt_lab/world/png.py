"""A minimal PNG encoder for 8-bit RGB arrays.

Pillow's encoder tries every row filter on every row; for the noisy images of
the visual domain that alone costs several times more than drawing them. One
fixed "Up" filter with zlib's run-length strategy is about three times faster
and gives files no larger. Any PNG reader, Pillow included, decodes the result.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_FILTER_UP = 2
_RGB_8BIT = struct.pack(">BBBBB", 8, 2, 0, 0, 0)  # bit depth, colour type, compression, filter, interlace


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def encode_png(image: np.ndarray) -> bytes:
    """PNG file bytes of a uint8 (height, width, 3) array."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected a uint8 (height, width, 3) array, got {image.dtype} {image.shape}")
    height, width, _ = image.shape
    flat = image.reshape(height, width * 3)
    rows = np.empty((height, 1 + width * 3), dtype=np.uint8)
    rows[:, 0] = _FILTER_UP
    rows[0, 1:] = flat[0]  # the row above the first counts as zeros
    np.subtract(flat[1:], flat[:-1], out=rows[1:, 1:])  # uint8 wraps modulo 256, as the filter wants
    deflate = zlib.compressobj(1, zlib.DEFLATED, 15, 8, zlib.Z_RLE)
    data = deflate.compress(rows.tobytes()) + deflate.flush()
    header = struct.pack(">II", width, height) + _RGB_8BIT
    return _SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", data) + _chunk(b"IEND", b"")
