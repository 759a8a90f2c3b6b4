"""A real-text fine-tuning fixture: Python standard library docstrings, first line -> the rest.

    python -m train.fixture --output build/finetune/stdlib

Every function, method and class docstring of the interpreter's standard library
(parsed with ``ast``, nothing imported; test suites, idlelib, turtledemo and
site-packages left out) whose first line is a whole sentence (ending with a full stop) of 3-24 words and whose rest
is at least 8 words becomes a pair: the first line is the query, the document is
the qualified name (title) and the rest of the docstring (text). Duplicated first
lines or documents are dropped (their answer is ambiguous). The pairs are shuffled
with a fixed seed and split: ``--heldout`` queries for evaluation, ``--train``
pairs for training. Output (deterministic for a given Python version, which
manifest.json records):

- ``train.jsonl``: ``{"query", "pos": [title + " " + text]}`` per training pair;
- ``heldout/``: a BEIR folder (corpus.jsonl, queries.jsonl, qrels/test.tsv): the corpus
  holds the held-out documents, the training documents and ``--distractors`` others
  (default all), the queries only the held-out ones;
- ``manifest.json``: sizes, seed, Python version, sha256 of each file.
"""

from __future__ import annotations

import argparse
import ast
import json
import platform
from collections import Counter
import random
import sysconfig
from pathlib import Path

from splade_triton.artifacts.files import file_sha256, staged_directory

__all__ = ["build", "docstring_pairs"]

SKIP_PARTS = {"test", "tests", "idlelib", "turtledemo", "site-packages", "lib2to3", "__pycache__", "ensurepip"}


def _pairs_of(path: Path, module: str):
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return

    def walk(node, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}.{child.name}"
                doc = ast.get_docstring(child, clean=True)
                if doc:
                    yield name, doc, child.lineno
                yield from walk(child, name)

    yield from walk(tree, module)


def docstring_pairs(stdlib: Path | None = None) -> list[dict]:
    """Every usable (query, title, text) of the standard library, in file and line order, deduplicated."""
    root = Path(stdlib or sysconfig.get_paths()["stdlib"])
    found = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if SKIP_PARTS & set(rel.parts) or rel.name.startswith("test_"):
            continue
        module = ".".join(rel.with_suffix("").parts).removesuffix(".__init__")
        for name, doc, line in _pairs_of(path, module):
            first, _, rest = doc.partition("\n")
            query, text = " ".join(first.split()), " ".join(rest.split())
            if not 3 <= len(query.split()) <= 24 or len(text.split()) < 8 or not query.endswith("."):
                continue
            found.append({"query": query, "title": name, "text": text})
    q, t = Counter(p["query"] for p in found), Counter(p["text"] for p in found)
    return [p for p in found if q[p["query"]] == 1 and t[p["text"]] == 1]


def _sha(path: Path) -> str:
    return file_sha256(path)


def build(output: Path, train: int | None = None, heldout: int = 400, distractors: int | None = None, seed: int = 12,
          stdlib: Path | None = None) -> dict:
    pairs = docstring_pairs(stdlib)
    random.Random(seed).shuffle(pairs)
    train = len(pairs) - heldout if train is None else train
    if train + heldout > len(pairs):
        raise ValueError(f"only {len(pairs)} docstring pairs; asked for {train} + {heldout}")
    held, trained, rest = pairs[:heldout], pairs[heldout:heldout + train], pairs[heldout + train:]
    rest = rest if distractors is None else rest[:distractors]
    with staged_directory(Path(output)) as out:
        with open(out / "train.jsonl", "w", encoding="utf-8") as f:
            for p in trained:
                f.write(json.dumps({"query": p["query"], "pos": [f"{p['title']} {p['text']}"]},
                                   ensure_ascii=False) + "\n")
        beir = out / "heldout"
        (beir / "qrels").mkdir(parents=True)
        corpus = [("h", i, p) for i, p in enumerate(held)] + [("t", i, p) for i, p in enumerate(trained)] \
            + [("x", i, p) for i, p in enumerate(rest)]
        with open(beir / "corpus.jsonl", "w", encoding="utf-8") as f:
            for tag, i, p in corpus:
                f.write(json.dumps({"_id": f"{tag}{i}", "title": p["title"], "text": p["text"]},
                                   ensure_ascii=False) + "\n")
        with open(beir / "queries.jsonl", "w", encoding="utf-8") as f, \
                open(beir / "qrels" / "test.tsv", "w", encoding="utf-8") as q:
            q.write("query-id\tcorpus-id\tscore\n")
            for i, p in enumerate(held):
                f.write(json.dumps({"_id": f"q{i}", "text": p["query"]}, ensure_ascii=False) + "\n")
                q.write(f"q{i}\th{i}\t1\n")
        files = [out / "train.jsonl", beir / "corpus.jsonl", beir / "queries.jsonl", beir / "qrels" / "test.tsv"]
        manifest = {
            "source": "docstrings of the Python standard library (first line -> rest)",
            "python": platform.python_version(), "seed": seed, "pairs_found": len(pairs),
            "train": len(trained), "heldout": len(held), "corpus": len(corpus),
            "sha256": {str(p.relative_to(out)): _sha(p) for p in files},
        }
        (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m train.fixture", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=Path("build/finetune/stdlib"))
    parser.add_argument("--train", type=int, default=None, help="training pairs (default: all not held out)")
    parser.add_argument("--heldout", type=int, default=400)
    parser.add_argument("--distractors", type=int, default=None, help="other documents in the corpus (default all)")
    parser.add_argument("--seed", type=int, default=12)
    args = parser.parse_args(argv)
    print(json.dumps(build(args.output, args.train, args.heldout, args.distractors, args.seed), indent=1))


if __name__ == "__main__":
    main()
