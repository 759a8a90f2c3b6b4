"""Deterministic benchmark texts built from the tokenizer's whole-word vocabulary.

Queries have 4-12 words, passages 100-130 words. Words are drawn from the
vocabulary's plain alphabetic whole words (no ``##`` pieces, no special
tokens), so token counts are realistic for the model's own tokenizer.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from splade_triton.serving.tokens import load_tokenizer

WORKLOADS = {"queries": (4, 12), "passages": (100, 130)}


def words(tokenizer: Tokenizer) -> list[str]:
    vocab = tokenizer.get_vocab()
    return sorted(w for w in vocab if w.isascii() and w.isalpha() and len(w) >= 2)


def make(tokenizer: Tokenizer, kind: str, count: int, seed: int = 0) -> list[str]:
    """``count`` texts of the given kind; the same ones on every run."""
    low, high = WORKLOADS[kind]
    pool = words(tokenizer)
    rng = np.random.default_rng([seed, list(WORKLOADS).index(kind)])
    return [" ".join(rng.choice(pool, size=rng.integers(low, high + 1))) for _ in range(count)]


def mean_tokens(tokenizer: Tokenizer, texts: list[str]) -> float:
    return float(np.mean([len(e.ids) for e in tokenizer.encode_batch(texts)]))


def write_perf_analyzer_json(texts: list[str], path: Path) -> Path:
    """perf_analyzer --input-data: one request of one text per entry."""
    data = {"data": [{"text": {"content": [t], "shape": [1]}} for t in texts]}
    path.write_text(json.dumps(data))
    return path


def write_plain(texts: list[str], path: Path) -> Path:
    path.write_text("\n".join(texts) + "\n")
    return path


if __name__ == "__main__":
    import sys

    tok = load_tokenizer(sys.argv[1] if len(sys.argv) > 1 else "build/models/splade-tiny/tokenizer.json")
    for kind in WORKLOADS:
        texts = make(tok, kind, 64)
        print(f"{kind}: mean {mean_tokens(tok, texts):.1f} tokens; e.g. {texts[0][:100]!r}")
