"""Before/after retrieval quality of SPLADE models, BM25, and the pruning sweep.

    python -m train.evaluate --beir build/finetune/stdlib/heldout --bm25 \
        --model stock=models/splade-tiny --model tuned=build/finetune/runs/default \
        --sweep tuned --plot docs/finetuning.png --output build/finetune/results.json

Each model encodes the corpus and the queries in this process (sentence-transformers'
SparseEncoder over the masked-LM directory: the served vectors, within the export's
1e-4), documents and queries are scored by sparse dot product (:func:`client.scoring.score_matrix`), and the run is scored by
:func:`client.evaluate.measure_run` (ir-measures: nDCG@10, MRR@10, Recall@100), the
functions ``python -m client evaluate`` uses on a server. Also reported: the average
number of active (non-zero) terms of queries and documents, and the index size
(postings; 8 bytes each: int32 id + float32 weight).

The sweep prunes the vectors after encoding, as the served ``sparsify`` step does with
``top_k`` / ``min_weight`` (the largest ``top_k`` terms, then those >= ``min_weight``),
on the documents, on the queries, and on both (one pipeline's sparsify defaults apply
to both). It recommends the setting with the smallest index whose nDCG@10 stays within
``--tolerance`` (default 1%) of the unpruned one, and ``--write-spec NAME`` writes it
into pipelines/NAME.toml as ``[sparsify.parameters]``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from client.corpus import BeirDataset, load_beir
from client.evaluate import DEFAULT_MEASURES, measure_run
from client.formats import SparseVector
from client.scoring import score_matrix

from .data import Example, read_examples

__all__ = ["Encoded", "bm25_run", "dataset_from_examples", "encode_dataset", "prune", "recommend", "score",
           "sweep", "write_sparsify_defaults"]

TOP_KS = (0, 8, 16, 32, 64, 128)
MIN_WEIGHTS = (0.0, 0.1, 0.25, 0.5, 1.0)
POSTING_BYTES = 8


@dataclass
class Encoded:
    """One model's vectors of a dataset, in the dataset's order."""

    doc_ids: list[str]
    docs: list[SparseVector]
    query_ids: list[str]
    queries: list[SparseVector]
    seconds: float = 0.0


def dataset_from_examples(examples: Sequence[Example]) -> BeirDataset:
    """A held-out JSONL split as a retrieval task: every pos/neg text is a document, positives judged 1."""
    corpus: dict[str, str] = {}
    ids: dict[str, str] = {}
    queries, qrels = {}, {}
    for n, e in enumerate(examples):
        qid = f"q{n}"
        queries[qid] = e.query
        qrels[qid] = {}
        for text in (*e.pos, *e.neg):
            if text not in ids:
                ids[text] = f"d{len(ids)}"
                corpus[ids[text]] = text
        for text in e.pos:
            qrels[qid][ids[text]] = 1
    return BeirDataset(corpus, queries, qrels)


def _to_vectors(matrix) -> list[SparseVector]:
    coo = matrix.coalesce().cpu()
    rows, cols = coo.indices().numpy()
    values = coo.values().numpy()
    out = []
    for r in range(coo.shape[0]):
        sel = rows == r
        out.append(SparseVector.from_pairs(zip(cols[sel].tolist(), values[sel].tolist())))
    return out


def encode_texts(model, texts: Sequence[str], batch_size: int = 32, side: str = "document") -> list[SparseVector]:
    """``texts`` encoded on ``side``: SparseEncoder's ``encode_query`` for queries, ``encode_document``
    for documents (the served ``input_type``; they differ for an asymmetric model)."""
    if side not in ("query", "document"):
        raise ValueError(f"side must be 'query' or 'document', got {side!r}")
    if not texts:
        return []
    encode = model.encode_query if side == "query" else model.encode_document
    return _to_vectors(encode(list(texts), batch_size=batch_size, convert_to_sparse_tensor=True,
                              show_progress_bar=False))


def encode_dataset(model_dir: str | os.PathLike, dataset: BeirDataset, max_length: int = 512,
                   device: str | None = None) -> Encoded:
    """Encode with the model the served pipeline would run (max_length as the tokenizer step's 512)."""
    from .splade import build_encoder

    start = time.perf_counter()
    model = build_encoder(model_dir, max_length, device)
    doc_ids, query_ids = list(dataset.corpus), list(dataset.queries)
    docs = encode_texts(model, [dataset.corpus[d] for d in doc_ids], side="document")
    queries = encode_texts(model, [dataset.queries[q] for q in query_ids], side="query")
    return Encoded(doc_ids, docs, query_ids, queries, time.perf_counter() - start)


def prune(vectors: Sequence[SparseVector], top_k: int = 0, min_weight: float = 0.0) -> list[SparseVector]:
    """What sparsify serves with ``top_k`` / ``min_weight``: the largest top_k terms (0: all), those >= min_weight."""
    out = []
    for v in vectors:  # heaviest first already (SparseVector's order)
        keep = v.values >= min_weight
        if top_k:
            keep[top_k:] = False
        out.append(SparseVector(v.indices[keep], v.values[keep]))
    return out


def score(dataset: BeirDataset, encoded: Encoded, depth: int = 100) -> dict:
    """Metrics of a sparse run, active terms and index size.

    Scores are the sparse dot products (client.scoring.score_matrix), the ``depth`` best
    documents with a positive score per query, ties in corpus order, as SparseIndex.search ranks.
    """
    run = {}
    if encoded.docs and encoded.queries:
        matrix = score_matrix(encoded.queries, encoded.docs)
        for qid, row in zip(encoded.query_ids, matrix):
            order = np.lexsort((np.arange(row.size), -row))[:depth]
            run[qid] = {encoded.doc_ids[i]: float(row[i]) for i in order if row[i] > 0}
    postings = int(sum(len(v) for v in encoded.docs))
    return {**measure_run(dataset.qrels, run, DEFAULT_MEASURES),
            "query_terms": float(np.mean([len(v) for v in encoded.queries])) if encoded.queries else 0.0,
            "doc_terms": postings / len(encoded.docs) if encoded.docs else 0.0,
            "index_mib": postings * POSTING_BYTES / 2**20}


def bm25_run(dataset: BeirDataset, depth: int = 100) -> dict:
    """bm25s (English stemmer, stop words) on the same task; 'terms' are unique stemmed tokens."""
    import bm25s

    from .bm25 import BM25

    doc_ids, query_ids = list(dataset.corpus), list(dataset.queries)
    index = BM25([dataset.corpus[d] for d in doc_ids])
    hits = index.search([dataset.queries[q] for q in query_ids], depth)
    run = {qid: {doc_ids[d]: s for d, s in row} for qid, row in zip(query_ids, hits)}
    def unique_terms(texts):
        tokens = bm25s.tokenize(texts, stopwords="en", stemmer=index._stemmer, show_progress=False,
                                return_ids=True)
        return float(np.mean([len(set(t)) for t in tokens.ids])) if texts else 0.0
    return {**measure_run(dataset.qrels, run, DEFAULT_MEASURES),
            "query_terms": unique_terms([dataset.queries[q] for q in query_ids]),
            "doc_terms": unique_terms([dataset.corpus[d] for d in doc_ids])}


def sweep(dataset: BeirDataset, encoded: Encoded, top_ks: Sequence[int] = TOP_KS,
          min_weights: Sequence[float] = MIN_WEIGHTS) -> list[dict]:
    """Quality and size for each (side, top_k, min_weight); side: documents, queries, both."""
    rows = []
    for side in ("documents", "queries", "both"):
        for top_k in top_ks:
            for min_weight in min_weights:
                docs = prune(encoded.docs, top_k, min_weight) if side != "queries" else encoded.docs
                queries = prune(encoded.queries, top_k, min_weight) if side != "documents" else encoded.queries
                pruned = Encoded(encoded.doc_ids, docs, encoded.query_ids, queries)
                rows.append({"side": side, "top_k": top_k, "min_weight": min_weight, **score(dataset, pruned)})
    return rows


def recommend(rows: list[dict], tolerance: float = 0.01, metric: str = "nDCG@10") -> dict:
    """The 'both' setting with the smallest index whose ``metric`` is >= (1 - tolerance) x the unpruned one
    (ties: the better metric, then fewer query terms)."""
    both = [r for r in rows if r["side"] == "both"]
    full = next(r for r in both if r["top_k"] == 0 and r["min_weight"] == 0)
    good = [r for r in both if r[metric] >= (1 - tolerance) * full[metric]]
    return min(good, key=lambda r: (r["index_mib"], -r[metric], r["query_terms"]))


_SECTION = re.compile(r"^\[sparsify\.parameters\]\s*$", re.M)


def write_sparsify_defaults(spec: Path, top_k: int, min_weight: float) -> None:
    """Set ``[sparsify.parameters] top_k / min_weight`` in a pipeline spec, keeping the rest of the file;
    the result is checked by loading it as a pipeline before it replaces the spec."""
    from splade_triton.artifacts.repository import Pipeline

    text = Path(spec).read_text()
    lines = [f"top_k = {int(top_k)}", f"min_weight = {float(min_weight):g}"]
    match = _SECTION.search(text)
    if match:
        end = re.compile(r"^\[", re.M).search(text, match.end())
        body = text[match.end():end.start() if end else len(text)]
        body = re.sub(r"^\s*(top_k|min_weight)\s*=.*\n?", "", body, flags=re.M)
        new_body = "\n" + "\n".join(lines) + "\n" + body.lstrip("\n")
        text = text[:match.end()] + new_body + (text[end.start():] if end else "")
    else:
        text = text.rstrip("\n") + "\n\n# Written by python -m train.evaluate --write-spec (the pruning sweep's pick).\n" \
            + "[sparsify.parameters]\n" + "\n".join(lines) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=f".{Path(spec).name}.", dir=Path(spec).parent, suffix=".toml")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    try:
        Pipeline.load(Path(tmp))
        os.replace(tmp, spec)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def plot(rows: list[dict], path: Path, title: str, references: dict[str, dict] | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for side, marker in (("documents", "o"), ("both", "s")):
        sel = sorted((r for r in rows if r["side"] == side), key=lambda r: r["index_mib"])
        ax.scatter([r["index_mib"] for r in sel], [r["nDCG@10"] for r in sel], marker=marker, alpha=0.7,
                   label=f"pruned {side} (top_k x min_weight)")
    for name, ref in (references or {}).items():
        if "index_mib" in ref:
            ax.scatter([ref["index_mib"]], [ref["nDCG@10"]], marker="*", s=180, label=name)
        else:
            ax.axhline(ref["nDCG@10"], linestyle="--", color="grey", label=name)
    ax.set_xlabel("index size (MiB of postings, 8 bytes each)")
    ax.set_ylabel("nDCG@10 (held-out)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m train.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--beir", help="a BEIR folder (corpus.jsonl, queries.jsonl, qrels/<split>.tsv)")
    src.add_argument("--data", help="held-out JSONL pairs ({query, pos, neg}); their texts are the corpus")
    p.add_argument("--split", default="test")
    p.add_argument("--model", action="append", default=[], metavar="[NAME=]DIR", help="repeatable")
    p.add_argument("--bm25", action="store_true", help="also BM25 (bm25s)")
    p.add_argument("--sweep", metavar="NAME", default=None, help="prune this model's vectors over top_k x min_weight")
    p.add_argument("--tolerance", type=float, default=0.01, help="nDCG@10 loss allowed by the recommendation")
    p.add_argument("--write-spec", metavar="PIPELINE", default=None,
                   help="write the recommendation into pipelines/PIPELINE.toml [sparsify.parameters]")
    p.add_argument("--plot", type=Path, default=None, help="PNG of the sweep's trade-off")
    p.add_argument("--output", type=Path, default=None, help="JSON of every figure")
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--device", default=None)
    args = p.parse_args(argv)

    try:
        dataset = load_beir(args.beir, args.split) if args.beir else dataset_from_examples(read_examples(args.data))
    except ValueError as e:
        raise SystemExit(f"train.evaluate: {e}") from None
    models = dict((m.split("=", 1) if "=" in m else (Path(m).name, m)) for m in args.model)
    if args.sweep and args.sweep not in models:
        raise SystemExit(f"train.evaluate: --sweep {args.sweep}: no --model of that name ({', '.join(models)})")
    results: dict = {"dataset": args.beir or args.data, "documents": len(dataset.corpus),
                     "queries": len(dataset.queries), "models": {}}
    if args.bm25:
        results["models"]["BM25 (bm25s)"] = bm25_run(dataset)
        print(json.dumps({"BM25 (bm25s)": results["models"]["BM25 (bm25s)"]}))
    encoded = {}
    for name, path in models.items():
        encoded[name] = encode_dataset(path, dataset, args.max_length, args.device)
        results["models"][name] = {**score(dataset, encoded[name]), "encode_seconds": round(encoded[name].seconds, 1)}
        print(json.dumps({name: results["models"][name]}))
    if args.sweep:
        rows = sweep(dataset, encoded[args.sweep])
        pick = recommend(rows, args.tolerance)
        results["sweep"] = {"model": args.sweep, "rows": rows, "recommended": pick, "tolerance": args.tolerance}
        print(json.dumps({"recommended": pick}))
        if args.plot:
            plot(rows, args.plot, f"pruning sweep of {args.sweep}", results["models"])
        if args.write_spec:
            from splade_triton.artifacts.repository import PIPELINES

            spec = PIPELINES / f"{args.write_spec}.toml"
            write_sparsify_defaults(spec, pick["top_k"], pick["min_weight"])
            print(f"wrote top_k = {pick['top_k']}, min_weight = {pick['min_weight']:g} into {spec} "
                  "[sparsify.parameters]; assemble the repository to serve them")
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
