"""``python -m client``: embed, bulk-encode, index into a search engine, search, evaluate, and check the service.

Every command talks to the server given by ``--url`` (default ``$SPLADE_URL``,
else ``grpc://127.0.0.1:8001``; repeated or comma-separated: replicas, requests
spread over them with failover) and the pipeline given by ``--model`` (default
``splade``); whether it is a SPLADE or a BGE-M3 pipeline is read from the
model's metadata (``--kind`` to say it). A failure is one line on stderr and a
non-zero exit status: 1 for errors, 2 for bad usage, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from importlib.metadata import version
from typing import Any, TextIO

import numpy as np
from tqdm import tqdm

from .bulk import MAX_WINDOWS, ON_ERROR, encode_records, request_batches
from .core import (
    DEFAULT_URL,
    INPUT_TYPES,
    MAX_BATCH_SIZE,
    MAX_REQUEST_BYTES,
    BgeM3Client,
    SpladeClient,
    _BlockingClient,
    batched,
)
from .corpus import (
    VectorsFile,
    count_lines,
    embedding_line,
    id_key,
    load_beir,
    read_jsonl,
    read_vectors,
    record_text,
    vector_line,
)
from .engine import DEFAULT_ENGINE
from .errors import InvalidRequestError, ModelNotFoundError, ServerError, SpladeError
from .formats import FORMATS, SparseVector, _floats
from .m3 import M3Embedding, to_flagembedding
from .retrieval import DEFAULT_FUSION, FUSIONS, NORMALIZATIONS, RETRIEVERS

__all__ = ["main"]

URL_ENV = "SPLADE_URL"


class CommandError(Exception):
    """A failure to report as one line (exit status 1)."""


KINDS = ("splade", "bge_m3")


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    return dict(protocol=args.protocol, model=args.model, batch_size=args.batch_size,
                max_request_bytes=args.max_request_bytes, max_in_flight=args.max_in_flight,
                timeout=args.timeout, retries=args.retries)


def _kind(args: argparse.Namespace) -> str:
    """``splade`` or ``bge_m3``: ``--kind``, else what the model's metadata says (a ``dense`` output)."""
    if args.kind != "auto":
        return args.kind
    with _BlockingClient(args.url, **_settings(args)) as probe:
        try:
            outputs = probe.model_outputs()
        except (ModelNotFoundError, InvalidRequestError, ServerError):
            # No such model (or no metadata): the request itself reports it as usual.
            return "splade"
    return "bge_m3" if "dense" in outputs else "splade"


def _client(args: argparse.Namespace) -> SpladeClient | BgeM3Client:
    if getattr(args, "resolved_kind", None) is None:
        args.resolved_kind = _kind(args)
    cls = BgeM3Client if args.resolved_kind == "bge_m3" else SpladeClient
    return cls(args.url, **_settings(args))


def _sides(args: argparse.Namespace) -> dict[str, Any]:
    """The side and long-text handling a SPLADE embed/encode asks for (None: the server's default)."""
    return dict(input_type=args.input_type, overflow=args.overflow)


def _m3_asked(args: argparse.Namespace) -> dict[str, Any]:
    """What a BGE-M3 embed/encode asks for."""
    if args.overflow == "chunk":
        raise CommandError("--overflow chunk is for SPLADE pipelines: a BGE-M3 one takes 8192 tokens per text")
    if not (args.dense or args.sparse or args.colbert):
        raise CommandError("nothing to compute: --no-dense and --no-sparse without --colbert")
    return dict(return_dense=args.dense, return_sparse=args.sparse, return_colbert_vecs=args.colbert,
                input_type=args.input_type, top_k=args.top_k, min_weight=args.min_weight)


def _progress(args: argparse.Namespace, **kwargs: Any) -> tqdm:
    # None: tqdm shows the bar only on a terminal.
    disable = {"auto": None, "on": False, "off": True}[args.progress]
    return tqdm(file=sys.stderr, disable=disable, dynamic_ncols=True, **kwargs)


def _print_json(data: Any, out: TextIO) -> None:
    json.dump(data, out, ensure_ascii=False)
    out.write("\n")


# --- embed -------------------------------------------------------------------------


def _read_texts(texts: Sequence[str]) -> list[str]:
    if list(texts) == ["-"]:
        return [line.rstrip("\n") for line in sys.stdin]
    return list(texts)


def _human(text: str, vector: SparseVector, show: int, out: TextIO) -> None:
    out.write(f"{text}\n")
    terms = vector.top(show)
    width = max((len(str(t)) for t, _ in terms), default=0)
    for term, weight in terms:
        out.write(f"  {str(term):<{width}}  {weight:.3f}\n")
    more = len(vector) - len(terms)
    out.write(f"  ({len(vector)} terms{f', {more} more not shown' if more > 0 else ''})\n")


def _human_m3(text: str, embedding: M3Embedding, show: int, out: TextIO) -> None:
    out.write(f"{text}\n")
    if embedding.dense is not None:
        head = " ".join(f"{v:.4f}" for v in _floats(embedding.dense[:4]))
        out.write(f"  dense    [{embedding.dense.size}]  {head} ...  "
                  f"(norm {float(np.linalg.norm(embedding.dense)):.3f})\n")
    if embedding.colbert is not None:
        out.write(f"  colbert  [{embedding.colbert.shape[0]}, {embedding.colbert.shape[1]}]  "
                  f"one vector per token after <s>\n")
    if embedding.sparse is not None:
        out.write("  sparse\n")
        buf = io.StringIO()
        _human("", embedding.sparse, show, buf)
        out.write("".join(f"  {line}\n" for line in buf.getvalue().splitlines()[1:]))


def cmd_embed(args: argparse.Namespace) -> int:
    texts = _read_texts(args.texts)
    out = sys.stdout
    with _client(args) as client:
        if isinstance(client, BgeM3Client):
            if args.format == "tei":
                raise CommandError("--format tei is for SPLADE pipelines; a BGE-M3 one prints human, native or m3")
            embeddings = client.encode(texts, return_tokens=args.format in ("human", "native"), **_m3_asked(args))
        else:
            vectors = client.encode(texts, top_k=args.top_k, min_weight=args.min_weight,
                                    return_tokens=args.format in ("human", "native"), **_sides(args))
    if isinstance(client, BgeM3Client):
        if args.format == "human":
            for i, (text, embedding) in enumerate(zip(texts, embeddings)):
                if i:
                    out.write("\n")
                _human_m3(text, embedding, args.show, out)
        elif args.format == "native":
            _print_json([e.to_native() for e in embeddings], out)
        else:  # FlagEmbedding's encode() result, as JSON
            result = to_flagembedding(embeddings)
            _print_json({"dense_vecs": None if result["dense_vecs"] is None else [_floats(v) for v in result["dense_vecs"]],
                         "lexical_weights": result["lexical_weights"],
                         "colbert_vecs": None if result["colbert_vecs"] is None
                         else [[_floats(row) for row in c] for c in result["colbert_vecs"]]}, out)
        return 0
    if args.format == "human":
        for i, (text, vector) in enumerate(zip(texts, vectors)):
            if i:
                out.write("\n")
            _human(text, vector, args.show, out)
    elif args.format == "native":
        _print_json([v.to_native() for v in vectors], out)
    elif args.format == "tei":
        _print_json([v.to_tei() for v in vectors], out)
    else:
        _print_json([v.to_lexical_weights() for v in vectors], out)
    return 0


# --- encode ------------------------------------------------------------------------


def _text_fields(values: Sequence[str]) -> list[str]:
    return [name for value in values for name in value.split(",") if name]


def cmd_encode(args: argparse.Namespace) -> int:
    text_fields = _text_fields(args.text_field)
    total = count_lines(args.input)
    skipped = 0

    with VectorsFile.open(args.output) as output:
        if output.dropped_bytes:
            print(f"{args.output}: dropped an incomplete last line ({output.dropped_bytes} bytes) "
                  "left by an interrupted run", file=sys.stderr)
        seen = output.done  # grows as records are sent: a repeated id is encoded once
        already = len(seen)

        def records() -> Iterator[tuple[Any, str]]:
            nonlocal skipped
            for number, obj in read_jsonl(args.input):
                where = f"{args.input}:{number}: "
                if args.id_field not in obj:
                    raise ValueError(f"{where}no {args.id_field!r} field")
                key = id_key(obj[args.id_field], where)
                if key in seen:
                    skipped += 1
                    continue
                seen.add(key)
                yield obj[args.id_field], record_text(obj, text_fields, where)

        chunks = request_batches(records(), lambda record: record[1], batch_size=args.batch_size,
                                 max_request_bytes=args.max_request_bytes,
                                 max_windows=args.max_windows if args.overflow == "chunk" else None)
        batches = ((tuple(i for i, _ in chunk), [t for _, t in chunk]) for chunk in chunks)
        written = 0
        start = time.perf_counter()
        # The bar counts input records: encoded ones, skipped ones and refused ones.
        with _client(args) as client, _progress(args, total=total, unit="text", desc="encode") as bar:
            refused = _Refusals(args.input)
            if isinstance(client, BgeM3Client):
                if args.format == "tei":
                    raise CommandError("--format tei is for SPLADE pipelines; a BGE-M3 one writes native or m3")
                options = dict(return_tokens=args.tokens, **_m3_asked(args))
                line = embedding_line
            else:
                options = dict(top_k=args.top_k, min_weight=args.min_weight, return_tokens=args.tokens, **_sides(args))
                line = vector_line
            # A corpus is documents unless --input-type says otherwise.
            options["input_type"] = args.input_type or "document"
            results = encode_records(client.encode_batches, batches, on_error=args.on_error, refused=refused,
                                     name=refused.name, **options)
            try:
                for ids, vectors in results:
                    output.write([line(i, v, args.format) for i, v in zip(ids, vectors)])
                    written += len(ids)
                    bar.update(written + skipped + refused.count - bar.n)
                bar.update(written + skipped + refused.count - bar.n)
            except KeyboardInterrupt:
                bar.close()
                print(f"interrupted: {written} new vectors written to {args.output} "
                      f"({already + written} in all); run the same command again to resume", file=sys.stderr)
                return 130
        seconds = time.perf_counter() - start
    rate = written / seconds if seconds > 0 else 0.0
    print(f"encoded {written} texts in {seconds:.2f} s ({rate:.1f} texts/s) over {client.url}; "
          f"{skipped} skipped (already in the output, or a repeated id); {refused.count} refused by the server "
          f"(each reported on stderr); {already + written} vectors in {args.output}")
    return 0


class _Refusals:
    """Reports each record the server refused (``--on-error skip``): one line on stderr, with its id."""

    def __init__(self, source: str):
        self.source, self.count = source, 0

    @staticmethod
    def name(record: Any) -> str:
        # A record is its id (encode) or its (id, text) pair (index).
        return f"record {(record[0] if isinstance(record, tuple) else record)!r}"

    def __call__(self, record: Any, error: Exception) -> None:
        self.count += 1
        tqdm.write(f"{self.source}: {self.name(record)} skipped: {_one_line(error)}", file=sys.stderr)


# --- search ------------------------------------------------------------------------


def _load_texts(args: argparse.Namespace) -> dict[str, str]:
    if not args.corpus:
        return {}
    fields = _text_fields(args.text_field)
    texts = {}
    for number, obj in read_jsonl(args.corpus):
        where = f"{args.corpus}:{number}: "
        texts[id_key(obj.get(args.id_field), where)] = record_text(obj, fields, where)
    return texts


def cmd_search(args: argparse.Namespace) -> int:
    from .scoring import SparseIndex

    if not args.vectors:
        return _search_engine(args)
    if args.retriever or args.fusion or args.weights:
        raise CommandError("--retriever, --fusion and --weights search an engine collection, not --vectors")
    ids, vectors = read_vectors(args.vectors)
    if not ids:
        raise CommandError(f"{args.vectors} holds no vectors")
    index = SparseIndex(ids, vectors)
    texts = _load_texts(args)
    # Stdin queries are answered as they come, one line at a time.
    queries = args.queries or (line.strip() for line in sys.stdin if line.strip())
    out = sys.stdout
    with _client(args) as client:
        for query in queries:
            if isinstance(client, BgeM3Client):  # its lexical weights, against the documents' ones
                vector = client.encode_queries(query, return_dense=False, return_sparse=True,
                                               top_k=args.query_top_k, return_tokens=True).sparse
            else:
                vector = client.encode_queries(query, top_k=args.query_top_k, return_tokens=True)
            hits = index.search(vector, args.hits)
            if args.json:
                _print_json({"query": query, "hits": [
                    {"id": h.id, "score": round(h.score, 6),
                     "terms": [{"token": t.token, "index": t.index, "query_weight": t.query_weight,
                                "document_weight": t.document_weight} for t in h.terms]}
                    for h in hits]}, out)
                out.flush()
                continue
            out.write(f"{query}\n")
            if not hits:
                out.write("  (no document shares a term with this query)\n")
            for rank, hit in enumerate(hits, 1):
                matched = ", ".join(f"{t.token or t.index} {t.contribution:.2f}" for t in hit.terms[:args.terms])
                if len(hit.terms) > args.terms:
                    matched += f", +{len(hit.terms) - args.terms} more"
                out.write(f"  {rank:>2}. {hit.id}  {hit.score:.3f}  [{matched}]\n")
                if hit.id in texts:
                    snippet = " ".join(texts[hit.id].split())
                    out.write(f"      {snippet[:100]}{'...' if len(snippet) > 100 else ''}\n")
            out.flush()
    return 0


# --- index and the engine -----------------------------------------------------------


ENGINE_ENV = "SPLADE_ENGINE"


def _engine(args: argparse.Namespace, collection: str | None = None, recreate: bool = False):
    from .engine import Engine

    kind = args.resolved_kind if getattr(args, "resolved_kind", None) else _kind(args)
    args.resolved_kind = kind
    return Engine(args.engine, collection or args.collection or args.model, pipeline=args.model, kind=kind,
                  recreate=recreate)


def _corpus_records(path: str, id_field: str, text_fields: Sequence[str]) -> tuple[str, Iterator[tuple[str, str]]]:
    """(the JSONL file, its (id, text) records): a BEIR folder is its corpus.jsonl, title + text."""
    if os.path.isdir(path):
        path, id_field, text_fields = os.path.join(path, "corpus.jsonl"), "_id", ("title", "text")

    def records() -> Iterator[tuple[str, str]]:
        for number, obj in read_jsonl(path):
            where = f"{path}:{number}: "
            if id_field not in obj:
                raise ValueError(f"{where}no {id_field!r} field")
            yield id_key(obj[id_field], where), record_text(obj, text_fields, where)

    return path, records()


def _index(args: argparse.Namespace, client, engine, source: str, records: Iterator[tuple[str, str]],
           total: int) -> int:
    from .retrieval import IndexReport, index_documents

    report = IndexReport()
    already = engine.count()
    with _progress(args, total=total, unit="doc", desc="index") as bar:
        try:
            index_documents(client, engine, records, kind=args.resolved_kind, batch_size=args.batch_size,
                            max_request_bytes=args.max_request_bytes, write_rows=args.write_batch,
                            doc_top_k=args.doc_top_k, progress=bar.update, report=report,
                            on_error=args.on_error, refused=_Refusals(source))
        except KeyboardInterrupt:
            bar.close()
            print(f"interrupted: {report.written} new documents written to collection {engine.collection!r} "
                  f"at {engine.uri}; run the same command again to resume", file=sys.stderr)
            raise _Interrupted from None
    engine.flush()
    print(f"indexed {report.written} documents in {report.seconds:.2f} s ({report.rate:.1f} docs/s, encoding "
          f"and writing); {report.skipped} skipped (already in the collection, or a repeated id); "
          f"{report.refused} refused by the server (each reported on stderr); "
          f"{already + report.written} documents in collection {engine.collection!r} at {engine.uri}",
          file=sys.stderr if args.command == "evaluate" else sys.stdout)
    return report.written


class _Interrupted(Exception):
    """Ctrl-C after the command said what it kept (exit status 130, no second message)."""


def cmd_index(args: argparse.Namespace) -> int:
    path, records = _corpus_records(args.input, args.id_field, _text_fields(args.text_field))
    total = count_lines(path)
    with _engine(args, recreate=args.recreate) as engine, _client(args) as client:
        _index(args, client, engine, path, records, total)
    return 0


def _retriever(args: argparse.Namespace, client, engine, retriever: str | None = None, fusion: str | None = None):
    from .retrieval import Retriever

    retriever = retriever or args.retriever or "hybrid"
    return Retriever(client, engine, kind=args.resolved_kind, retriever=retriever, fusion=fusion or args.fusion or DEFAULT_FUSION,
                     weights=args.weights if retriever == "hybrid" else None, normalize=args.normalize,
                     candidates=args.candidates, query_top_k=args.query_top_k)


def _search_engine(args: argparse.Namespace) -> int:
    out = sys.stdout
    with _engine(args) as engine, _client(args) as client:
        if not engine.exists:
            raise CommandError(f"collection {engine.collection!r} at {engine.uri} does not exist: "
                               "run python -m client index first")
        retriever = _retriever(args, client, engine)
        queries = args.queries or (line.strip() for line in sys.stdin if line.strip())
        for query in queries:
            hits = retriever.search([query], args.hits)[0]
            if args.json:
                _print_json({"query": query, "retriever": retriever.describe(),
                             "hits": [{"id": i, "score": round(s, 6)} for i, s in hits]}, out)
                out.flush()
                continue
            texts = engine.texts(i for i, _ in hits)
            out.write(f"{query}\n")
            if not hits:
                out.write("  (no document found)\n")
            for rank, (doc, score) in enumerate(hits, 1):
                snippet = " ".join(texts.get(doc, "").split())
                out.write(f"  {rank:>2}. {doc}  {score:.4f}\n      {snippet[:100]}{'...' if len(snippet) > 100 else ''}\n")
            out.flush()
    return 0


def _evaluate_engine(args: argparse.Namespace) -> int:
    import re

    from .evaluate import DEFAULT_MEASURES, measure_run, write_trec_run
    from .retrieval import FUSIONS, retrievers_of

    dataset = load_beir(args.dataset, args.split)
    measures = {m: m for m in args.measure} if args.measure else DEFAULT_MEASURES
    name = os.path.basename(os.path.normpath(args.dataset))
    start = time.perf_counter()
    args.resolved_kind = _kind(args)
    collection = args.collection or re.sub(r"\W", "_", f"{args.model}_{name}")
    chosen = args.retriever or "hybrid"
    with _engine(args, collection, recreate=args.recreate) as engine, _client(args) as client:
        _index(args, client, engine, os.path.join(args.dataset, "corpus.jsonl"), iter(dataset.corpus.items()),
               len(dataset.corpus))
        qids = list(dataset.queries)
        texts = [dataset.queries[q] for q in qids]
        # Every single retriever and the hybrid by each fusion: the comparison table.
        rows = [(r, None) for r in retrievers_of(args.resolved_kind)] + [("hybrid", f) for f in FUSIONS]
        table, runs, labels = {}, {}, {}
        for retriever, fusion in rows:
            r = _retriever(args, client, engine, retriever, fusion)
            label = r.describe()
            t0 = time.perf_counter()
            run: dict[str, dict[str, float]] = {}
            for chunk in batched(list(zip(qids, texts)), 64):
                for (qid, _), hits in zip(chunk, r.search([t for _, t in chunk], args.depth)):
                    run[qid] = dict(hits)
            table[label] = {**measure_run(dataset.qrels, run, measures),
                            "ms/query": 1000 * (time.perf_counter() - t0) / max(len(qids), 1)}
            runs[(retriever, fusion)], labels[(retriever, fusion)] = run, label
    key = (chosen, None) if chosen != "hybrid" else ("hybrid", args.fusion or DEFAULT_FUSION)
    if args.run:
        write_trec_run(runs[key], args.run, tag=labels[key].split()[0])
    seconds = time.perf_counter() - start
    if args.json:
        _print_json({"dataset": name, "documents": len(dataset.corpus), "queries": len(qids),
                     "retriever": labels[key], "metrics": {m: v for m, v in table[labels[key]].items() if m in measures},
                     "table": table, "engine": args.engine, "collection": collection,
                     "library": f"ir-measures {version('ir-measures')}", "seconds": round(seconds, 3)}, sys.stdout)
        return 0
    print(f"{name}: {len(dataset.corpus)} documents, {len(qids)} queries, engine {args.engine} "
          f"(collection {collection}), {seconds:.1f} s (metrics by ir-measures {version('ir-measures')})")
    columns = [*measures, "ms/query"]
    width = max(len(label) for label in table)
    print(f"  {'retriever':<{width}}  " + "  ".join(f"{c:>10}" for c in columns))
    for label, metrics in table.items():
        mark = "*" if label == labels[key] else " "
        print(f"{mark} {label:<{width}}  " + "  ".join(f"{metrics[c]:>10.4f}" if c != "ms/query" else f"{metrics[c]:>10.1f}"
                                                for c in columns))
    if args.run:
        print(f"* run written to {args.run}")
    return 0


# --- evaluate ----------------------------------------------------------------------


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluate import DEFAULT_MEASURES, evaluate, score_weights, write_trec_run

    if args.retriever or args.fusion or args.engine_asked:
        if args.score:
            raise CommandError("--score ranks in memory; --retriever / --fusion / --engine rank in the engine: "
                               "give one or the other")
        return _evaluate_engine(args)
    dataset = load_beir(args.dataset, args.split)
    measures = {m: m for m in args.measure} if args.measure else DEFAULT_MEASURES
    name = os.path.basename(os.path.normpath(args.dataset))
    with _client(args) as client, _progress(args, total=len(dataset.corpus) + len(dataset.queries),
                                            unit="text", desc="evaluate") as bar:
        if not isinstance(client, BgeM3Client) and (args.score not in (None, "sparse") or args.weights):
            raise CommandError("--score and --weights rank a BGE-M3 pipeline's outputs; "
                               f"model {args.model!r} is a SPLADE pipeline (sparse dot product)")
        score = args.score or ("hybrid" if isinstance(client, BgeM3Client) else "sparse")
        result = evaluate(client, dataset, name=name, depth=args.depth, query_top_k=args.query_top_k,
                          doc_top_k=args.doc_top_k, measures=measures, progress=bar.update,
                          score=score, weights=args.weights)
    if args.run:
        write_trec_run(result.run, args.run)
    if args.json:
        _print_json({**result.to_dict(), **({"score": score, "weights": list(score_weights(score, args.weights))}
                                            if isinstance(client, BgeM3Client) else {})}, sys.stdout)
        return 0
    ranking = f", ranked by {score}" + (f" {args.weights}" if args.weights else "") if isinstance(client, BgeM3Client) else ""
    print(f"{name}: {result.documents} documents, {result.queries} queries{ranking}, {result.seconds:.1f} s "
          f"(metrics by {result.library})")
    width = max(len(n) for n in result.metrics)
    for metric, value in result.metrics.items():
        print(f"  {metric:<{width}}  {value:.4f}")
    return 0


# --- health ------------------------------------------------------------------------


def cmd_health(args: argparse.Namespace) -> int:
    with _BlockingClient(args.url, **_settings(args)) as client:
        health = client.health(probe=not args.no_probe)
    if args.json:
        _print_json({**health.__dict__, "ok": health.ok or (args.no_probe and health.model_ready)}, sys.stdout)
    else:
        version = f" (Triton {health.version})" if health.version else ""
        print(f"server  {health.url}  {'live' if health.live else 'NOT live'}, "
              f"{'ready' if health.ready else 'NOT ready'}{version}")
        probe = f", inference {health.probe_ms:.1f} ms" if health.probe_ms is not None else ""
        print(f"model   {health.model}  {'ready' if health.model_ready else 'NOT ready'}{probe}")
    if not health.live or not health.ready:
        raise CommandError(f"the server at {health.url} is not ready")
    if not health.model_ready:
        raise CommandError(f"model {health.model!r} is not ready at {health.url}")
    if health.error:
        raise CommandError(f"model {health.model!r} says ready but an inference failed: {health.error}")
    return 0


# --- parser ------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser (one sub-command per task)."""
    common = argparse.ArgumentParser(add_help=False)
    server = common.add_argument_group("server")
    server.add_argument("--url", action="append",
                        help=f"grpc://host:port, http://host:port or dns:///host:port (gRPC, every address of the "
                             f"name); repeated or comma-separated: replicas, requests spread over them with "
                             f"failover (default ${URL_ENV} or {DEFAULT_URL})")
    server.add_argument("--protocol", choices=("grpc", "http"),
                        help="protocol for a URL without a scheme (default grpc)")
    server.add_argument("--model", default="splade",
                        help="pipeline (its ensemble) name, e.g. splade or bge_m3 (default splade)")
    server.add_argument("--kind", choices=("auto", *KINDS), default="auto",
                        help="what kind of pipeline --model is (default auto: read from the model's metadata)")
    server.add_argument("--timeout", type=float, default=60.0, help="seconds per request (default 60)")
    server.add_argument("--retries", type=int, default=4,
                        help="retries of a request that cannot reach the server (default 4)")
    server.add_argument("--batch-size", type=_positive_int, default=MAX_BATCH_SIZE,
                        help=f"texts per request (default {MAX_BATCH_SIZE}, the model's limit)")
    server.add_argument("--max-request-bytes", type=_positive_int, default=MAX_REQUEST_BYTES,
                        help=f"UTF-8 bytes of one request's texts together (default {MAX_REQUEST_BYTES}, "
                             "the server's max_request_bytes)")
    server.add_argument("--max-in-flight", type=_positive_int, default=4,
                        help="concurrent requests (default 4)")
    server.add_argument("-v", "--verbose", action="store_true", help="log retries")

    progress = argparse.ArgumentParser(add_help=False)
    progress.add_argument("--progress", choices=("auto", "on", "off"), default="auto",
                          help="progress bar on stderr (auto: only on a terminal)")

    fields = argparse.ArgumentParser(add_help=False)
    fields.add_argument("--id-field", default="id", help="JSON field of a record's id (default id)")
    fields.add_argument("--text-field", action="append", default=None,
                        help="JSON field(s) of the text, repeatable or comma-separated, joined by a space "
                             "(default text)")

    m3 = argparse.ArgumentParser(add_help=False)
    group = m3.add_argument_group("BGE-M3 pipelines")
    group.add_argument("--dense", action=argparse.BooleanOptionalAction, default=True,
                       help="the dense vector (default on)")
    group.add_argument("--sparse", action=argparse.BooleanOptionalAction, default=True,
                       help="the lexical weights (default on)")
    group.add_argument("--colbert", action="store_true", help="also the ColBERT vectors (the <model>_colbert ensemble)")
    group = m3.add_argument_group("sides and long texts")
    group.add_argument("--input-type", choices=INPUT_TYPES,
                       help="query or document: the side of an asymmetric model (an inference-free query side, a "
                            "query/document pair) and its length limit (default: the server's, document)")
    group.add_argument("--overflow", choices=("truncate", "error", "chunk"),
                       help="a text past the length limit: truncate it, refuse it, or encode every window of it "
                            "and keep the max (SPLADE) (default: the server's, truncate)")

    bulk = argparse.ArgumentParser(add_help=False)
    group = bulk.add_argument_group("bulk encoding")
    group.add_argument("--on-error", choices=ON_ERROR, default="skip",
                       help="a record whose text the server refuses (over max_text_bytes, max_windows, ...): skip "
                            "it, reported on stderr with its id, or stop there (default skip)")

    engine_opts = argparse.ArgumentParser(add_help=False)
    group = engine_opts.add_argument_group("search engine")
    group.add_argument("--engine", default=None,
                       help=f"Milvus: a local .db file (Milvus Lite: the Milvus engine, started by the client, one "
                            f"process per file) or http://host:19530 (a Milvus server or cluster) (default "
                            f"${ENGINE_ENV} or {DEFAULT_ENGINE})")
    group.add_argument("--collection", help="collection name (default: the --model name; evaluate: "
                                            "<model>_<dataset>)")

    retrieval = argparse.ArgumentParser(add_help=False)
    group = retrieval.add_argument_group("retrieval (engine)")
    group.add_argument("--retriever", choices=RETRIEVERS,
                       help="bm25, sparse, dense / colbert (BGE-M3), or hybrid (default hybrid)")
    group.add_argument("--fusion", choices=FUSIONS, help=f"hybrid: rrf or weighted (default {DEFAULT_FUSION})")
    group.add_argument("--weights", help="hybrid: retriever=weight list, e.g. bm25=0.4,sparse=0.6 (default: "
                                         "SPLADE bm25=0.5,sparse=0.5; BGE-M3 sparse=0.2,dense=0.4,colbert=0.4); "
                                         "with --score: BGE-M3 dense,sparse,colbert")
    group.add_argument("--normalize", choices=NORMALIZATIONS,
                       help="weighted fusion: each retriever's scores min-max scaled per query (SPLADE default), "
                            "raw (none: BGE-M3 compute_score, its default) or Milvus' arctan; on the client")
    group.add_argument("--candidates", type=_positive_int, default=100,
                       help="documents each retriever hands to the fusion and to ColBERT re-scoring (default 100)")

    parser = argparse.ArgumentParser(prog="python -m client", description="Embed, bulk-encode, search and evaluate with the SPLADE / BGE-M3 Triton service.",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    embed = commands.add_parser("embed", parents=[common, m3], help="print the vector of a text",
                                description="Print the SPLADE vector (or BGE-M3 dense, lexical weights and ColBERT "
                                            "vectors) of each text ('-': one text per stdin line).")
    embed.add_argument("texts", nargs="+", metavar="TEXT")
    embed.add_argument("--format", choices=("human", *FORMATS), default="human",
                       help="human: top terms as words (default); native: indices/values/tokens (BGE-M3: "
                            "dense/sparse/colbert); tei: TEI /embed_sparse JSON (SPLADE only); m3: BGE-M3 "
                            "lexical_weights (BGE-M3: FlagEmbedding's dense_vecs/lexical_weights/colbert_vecs)")
    embed.add_argument("--top-k", type=int, help="keep at most N terms (the server's top_k)")
    embed.add_argument("--min-weight", type=float, help="drop lighter terms (the server's min_weight)")
    embed.add_argument("--show", type=_positive_int, default=20, help="terms shown in the human form (default 20)")
    embed.set_defaults(handler=cmd_embed)

    encode = commands.add_parser("encode", parents=[common, progress, fields, m3, bulk], help="bulk-encode a JSONL corpus",
                                 description="Encode every record of a JSON-lines corpus into a JSON-lines vectors "
                                             "file, one {\"id\": ..., <vector>} per line, in input order. Resumable: "
                                             "ids already in the output are skipped.")
    encode.add_argument("--input", required=True, help="corpus, one JSON object per line")
    encode.add_argument("--output", required=True, help="vectors file (appended to)")
    encode.add_argument("--format", choices=FORMATS, default="native",
                        help="native: indices/values (default; BGE-M3: dense/sparse/colbert); tei: embed_sparse; "
                             "m3: lexical_weights (BGE-M3: dense_vecs/lexical_weights/colbert_vecs)")
    encode.add_argument("--tokens", action="store_true", help="native: also write each term's token")
    encode.add_argument("--top-k", type=int, help="keep at most N terms per text")
    encode.add_argument("--min-weight", type=float, help="drop lighter terms")
    encode.add_argument("--max-windows", type=_positive_int, default=MAX_WINDOWS,
                        help=f"--overflow chunk: windows of one request at most, counted before sending (default "
                             f"{MAX_WINDOWS}, the server's max_windows)")
    encode.set_defaults(handler=cmd_encode)

    index = commands.add_parser("index", parents=[common, progress, fields, engine_opts, bulk],
                                help="bulk-encode a corpus into the search engine",
                                description="Encode every record of a JSON-lines corpus (or a BEIR folder's "
                                            "corpus.jsonl: _id, title + text) and write id, text, sparse (and "
                                            "BGE-M3 dense) vectors into a Milvus collection; the engine adds "
                                            "BM25. Resumable: ids already in the collection are skipped.")
    index.add_argument("--input", required=True, help="corpus, one JSON object per line, or a BEIR folder")
    index.add_argument("--doc-top-k", type=int, help="keep at most N terms per document")
    index.add_argument("--write-batch", type=_positive_int, default=1024,
                       help="documents per engine write (default 1024)")
    index.add_argument("--recreate", action="store_true", help="drop the collection first (only one this "
                                                               "client wrote)")
    index.set_defaults(handler=cmd_index)

    search = commands.add_parser("search", parents=[common, fields, engine_opts, retrieval],
                                 help="search the engine (or encoded documents)",
                                 description="Answer queries (arguments, or one per stdin line) with the best "
                                             "documents of an engine collection (python -m client index) by "
                                             "--retriever; or, with --vectors, of an encode output indexed in "
                                             "memory, with the matched terms.")
    search.add_argument("queries", nargs="*", metavar="QUERY")
    search.add_argument("--vectors", help="an encode output file, searched in memory instead of the engine")
    search.add_argument("--corpus", help="the corpus, to show each hit's text")
    search.add_argument("-k", "--hits", type=_positive_int, default=10, help="documents per query (default 10)")
    search.add_argument("--terms", type=_positive_int, default=5, help="matched terms shown per hit (default 5)")
    search.add_argument("--query-top-k", type=int, help="keep at most N query terms")
    search.add_argument("--json", action="store_true", help="one JSON object per query")
    search.set_defaults(handler=cmd_search)

    evaluate = commands.add_parser("evaluate", parents=[common, progress, engine_opts, retrieval, bulk],
                                   help="retrieval quality on a BEIR folder",
                                   description="Encode a BEIR-format dataset (corpus.jsonl, queries.jsonl, "
                                               "qrels/SPLIT.tsv) and report nDCG@10, MRR@10 and Recall@100 "
                                               "(ir-measures). With --retriever, --fusion or --engine: index it "
                                               "into the engine (resumably) and compare every retriever in a "
                                               "table (--run: the --retriever's run). Otherwise in memory: sparse "
                                               "dot product (BGE-M3: by --score).")
    evaluate.add_argument("--dataset", required=True, help="BEIR-format folder")
    evaluate.add_argument("--split", default="test", help="qrels split (default test)")
    evaluate.add_argument("--depth", type=_positive_int, default=100, help="documents retrieved per query")
    evaluate.add_argument("--query-top-k", type=int, help="keep at most N terms per query")
    evaluate.add_argument("--doc-top-k", type=int, help="keep at most N terms per document")
    evaluate.add_argument("--measure", action="append", help="an ir-measures measure instead of the defaults "
                                                             "(repeatable), e.g. P@5")
    evaluate.add_argument("--score", choices=("dense", "sparse", "colbert", "hybrid"),
                          help="BGE-M3: rank by this score (default hybrid; SPLADE: sparse only)")
    evaluate.add_argument("--write-batch", type=_positive_int, default=1024, help="engine: documents per write")
    evaluate.add_argument("--recreate", action="store_true", help="engine: drop the collection first")
    evaluate.add_argument("--run", help="also write the run here (TREC format)")
    evaluate.add_argument("--json", action="store_true", help="print the result as JSON")
    evaluate.set_defaults(handler=cmd_evaluate)

    health = commands.add_parser("health", parents=[common], help="server and model readiness",
                                 description="Check that the server is live and ready, that the model is ready, "
                                             "and that it answers a real inference.")
    health.add_argument("--no-probe", action="store_true", help="skip the test inference")
    health.add_argument("--json", action="store_true", help="print the result as JSON")
    health.set_defaults(handler=cmd_health)
    return parser


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror and exc.filename:
        return f"{exc.filename}: {exc.strerror}"
    return " ".join(str(exc).split()) or type(exc).__name__


def _terminate(signum: int, frame: object) -> None:
    # SIGTERM stops like Ctrl-C: complete lines written, nothing half-done.
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None, *, standalone: bool = False) -> int:
    """Run the command line; returns the exit status.

    ``standalone`` (``python -m client``): also set up logging and make SIGTERM
    stop a command the way Ctrl-C does. Left off when called from other code.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "url", "") is None:  # not a default of --url: a given one would be appended to it
        args.url = os.environ.get(URL_ENV, DEFAULT_URL)
    if hasattr(args, "text_field") and args.text_field is None:
        args.text_field = ["text"]
    if args.retries < 0:
        parser.error("--retries must be >= 0")
    if hasattr(args, "engine"):
        args.engine_asked = args.engine is not None
        args.engine = args.engine or os.environ.get(ENGINE_ENV) or DEFAULT_ENGINE
    if standalone:
        logging.basicConfig(format="%(levelname)s: %(message)s", stream=sys.stderr)
        logging.getLogger("client").setLevel(logging.INFO if args.verbose else logging.ERROR)
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, _terminate)
    try:
        return args.handler(args)
    except _Interrupted:
        return 130
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (SpladeError, CommandError, OSError, ValueError) as exc:
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return 1
