"""An export's tokenizer without torch: what a server running ONNX towers turns a text query into ids with.

open_clip's CLIP tokenizer is ported here (byte-level BPE over the vocabulary file the export holds: ftfy and
whitespace cleaning, lower case, start and end tokens, truncation keeping the end token, zero padding), since
importing open_clip's own imports torch; a Hugging Face tokenizer is read from the `tokenizer.json` that
save_pretrained writes. Either gives the very ids the backbone's `tokenize` gives (tests/test_onnx_server.py).
"""

from __future__ import annotations

import gzip
import html
from functools import lru_cache
from itertools import pairwise
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .manifest import TOKENIZER_DIR, ExportManifest

Tokenize = Callable[[Sequence[str]], np.ndarray]  # texts -> ids [B, context length], int64
MERGES = 49152 - 256 - 2  # the merges of open_clip's vocabulary (49408 tokens with the two special ones)
START, END = "<start_of_text>", "<end_of_text>"


def export_tokenizer(manifest: ExportManifest) -> Tokenize | None:
    """The export's tokenizer, to its text context length; None where the export holds none this module reads
    (the backbone, and so torch, tokenizes then)."""
    folder = Path(manifest.path) / TOKENIZER_DIR
    info, length = manifest.tokenizer, manifest.text_context_length
    if info.get("kind") == "open_clip-bpe" and info.get("clean") == "lower" and len(info.get("files", [])) == 1:
        return ClipBpe(folder / info["files"][0], length)
    if info.get("kind") == "huggingface" and (folder / "tokenizer.json").is_file():
        return _hugging_face(folder / "tokenizer.json", length, manifest.text_pad_id)
    return None


def _hugging_face(path: Path, length: int, pad_id: int) -> Tokenize:
    """As backbones/hf_loading.py's tokenizer: to `length`, truncated, padded with `pad_id` (CLIP's 0)."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.enable_truncation(length)
    tokenizer.no_padding()

    def tokenize(texts: Sequence[str]) -> np.ndarray:
        ids = np.full((len(texts), length), pad_id, dtype=np.int64)
        for row, encoding in zip(ids, tokenizer.encode_batch(list(texts))):
            row[: len(encoding.ids)] = encoding.ids
        return ids

    return tokenize


@lru_cache(maxsize=1)
def _byte_symbols() -> dict[int, str]:
    """Each byte as the printable character CLIP's BPE writes it as (open_clip's bytes_to_unicode)."""
    kept = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    moved = [b for b in range(256) if b not in kept]
    return {**{b: chr(b) for b in kept}, **{b: chr(256 + n) for n, b in enumerate(moved)}}


class ClipBpe:
    """open_clip's SimpleTokenizer (clean "lower", no added special tokens), numpy out."""

    def __init__(self, vocabulary: Path, context_length: int):
        import regex

        with gzip.open(vocabulary) as f:
            merges = [tuple(line.split()) for line in f.read().decode("utf-8").split("\n")[1 : MERGES + 1]]
        symbols = list(_byte_symbols().values())
        vocab = [*symbols, *(s + "</w>" for s in symbols), *("".join(m) for m in merges), START, END]
        self.encoder = {token: i for i, token in enumerate(vocab)}
        self.ranks = {merge: i for i, merge in enumerate(merges)}
        self.start, self.end = self.encoder[START], self.encoder[END]
        self.context_length = context_length
        self.pattern = regex.compile(
            rf"{START}|{END}|'s|'t|'re|'ve|'m|'ll|'d|[\p{{L}}]+|[\p{{N}}]|[^\s\p{{L}}\p{{N}}]+", regex.IGNORECASE
        )
        self._bpe = lru_cache(maxsize=2**16)(self._merge)

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        ids = np.zeros((len(texts), self.context_length), dtype=np.int64)
        for row, text in zip(ids, texts):
            tokens = [self.start, *self.encode(text), self.end][: self.context_length]
            tokens[-1] = self.end  # truncation keeps the end token
            row[: len(tokens)] = tokens
        return ids

    def encode(self, text: str) -> list[int]:
        import ftfy

        text = " ".join(html.unescape(html.unescape(ftfy.fix_text(text))).strip().split()).lower()
        symbols = _byte_symbols()
        ids: list[int] = []
        for word in self.pattern.findall(text):
            ids += [self.encoder[piece] for piece in self._bpe("".join(symbols[b] for b in word.encode("utf-8")))]
        return ids

    def _merge(self, word: str) -> tuple[str, ...]:
        """The word's pieces: its lowest-ranked adjacent pair merged, again and again, as CLIP's BPE does."""
        if word in (START, END):
            return (word,)
        parts = (*word[:-1], word[-1] + "</w>")
        while len(parts) > 1:
            pairs = set(pairwise(parts))
            best = min(pairs, key=lambda pair: self.ranks.get(pair, float("inf")))
            if best not in self.ranks:
                break
            merged: list[str] = []
            i = 0
            while i < len(parts):
                if i < len(parts) - 1 and (parts[i], parts[i + 1]) == best:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = tuple(merged)
        return parts
