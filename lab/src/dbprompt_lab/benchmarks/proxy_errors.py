"""Which words the proxy confuses: for each text->image miss on the source test set, the words
that differ between the query's image and the image ranked first.

    python -m dbprompt_lab.benchmarks.proxy_errors [--weights FILE] [--work-dir runs/proxy] [--top 15]

Prints T2I R@1, how many misses are two-shape scenes, and the most frequent word differences
(an empty difference: another image with exactly the same words, which no model can tell apart).
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

from dbprompt.evaluation import caption_index
from dbprompt.model import PromptedCLIP
from dbprompt.pipeline import encode_records, encode_texts
from dbprompt.prompts import PromptConfig
from dbprompt.runtime import CPU
from dbprompt_lab import proxy


def words(captions: tuple[str, ...]) -> Counter:
    return Counter(re.findall(r"\w+", " ".join(captions).lower()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", type=proxy.weights_file, default=None, help="weights file or pre-training checkpoint (default: the shipped weights)")
    ap.add_argument("--work-dir", default="runs/proxy", help="where the source test set is (or is written)")
    ap.add_argument("--top", type=int, default=15)
    args = ap.parse_args()
    model = PromptedCLIP(proxy.load_weights(proxy.NAME, args.weights), PromptConfig.none()).eval()
    records = proxy.source_test_records(Path(args.work_dir))
    texts, owner = caption_index(records)
    (images,), _ = encode_records([model], records, CPU)
    first = (encode_texts(model, texts, CPU) @ images.t()).argmax(1).numpy()
    misses = [q for q in range(len(texts)) if first[q] != owner[q]]
    print(f"T2I R@1 {100 * (1 - len(misses) / len(texts)):.1f} ({len(misses)} misses of {len(texts)} captions)")
    two = sum(" and a " in records[owner[q]].captions[0] for q in misses)
    print(f"misses whose scene has two shapes: {two} ({sum(' and a ' in t for t in texts)} such captions in all)")
    differences: Counter = Counter()
    for q in misses:
        a, b = words(records[owner[q]].captions), words(records[first[q]].captions)
        differences[" ".join(sorted(set((a - b) | (b - a)))) or "(same words)"] += 1
    for diff, count in differences.most_common(args.top):
        print(f"{count:5d}  {diff}")


if __name__ == "__main__":
    main()
