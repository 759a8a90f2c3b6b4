"""What the serving stack costs: the `splade` ensemble over gRPC against the bare graph in process.

    .venv/bin/python -m bench.stack                                  # SPLADE-tiny passages
    .venv/bin/python -m bench.stack --model bert-base-random --concurrency 16 --texts 48

Both sides encode the same passages (~120 tokens) with the same exported
graph on the same cores:

- bare: ONNX Runtime in this process, ``--threads`` threads, texts tokenized
  (tokenization included), sorted by length and run in batches of ``--batch``
  (bench.run's ``ort_fused_bs*_grouped``);
- served: perf_analyzer on ``splade`` over gRPC, ``--concurrency`` single-text
  requests in flight, against the project's launcher (bench.run.Served).

These VMs drift by 10-20% within minutes, more than the gap measured, so the
two alternate ``--rounds`` times and each round's ratio is served / bare of
that round; the median ratio is the figure. Per round it also prints where
the CPU went per text served (tritonserver, each step's stub, perf_analyzer).
``--write-docs``: the section "Serving stack cost: MODEL" of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
from pathlib import Path

from bench import workloads
from bench.report import write_sections
from bench.runtimes import machine
from bench.run import (
    BUILD, ROOT, Served, batches, best_rate, ort_session, perf_analyzer, prepare_bert_base, prepare_repository,
    run_perf_analyzer,
)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("splade-tiny", "bert-base-random"), default="splade-tiny")
    parser.add_argument("--texts", type=int, default=256, help="passages per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=64, help="served: requests in flight")
    parser.add_argument("--batch", type=int, default=16, help="bare: texts per ONNX Runtime call")
    parser.add_argument("--threads", type=int, default=2, help="bare: ONNX Runtime threads")
    parser.add_argument("--interval-ms", type=int, default=4000, help="perf_analyzer measurement window")
    parser.add_argument("--repository", type=Path, help="serve this repository instead (tuning variants)")
    parser.add_argument("--json-out", type=Path)
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args(argv)

    model_dir = ROOT / "models" / "splade-tiny" if args.model == "splade-tiny" else \
        prepare_bert_base(BUILD / args.model / "model")
    repository = args.repository or prepare_repository(args.model, model_dir)
    tokenizer = workloads.load_tokenizer(repository / "splade_tokenizer" / "1" / "tokenizer.json")
    texts = workloads.make(tokenizer, "passages", args.texts)
    data = workloads.write_perf_analyzer_json(texts, BUILD / f"stack-{args.model}-passages.json")
    session = ort_session(repository / "splade_encoder" / "1" / "model.onnx", args.threads)

    def bare():
        for feeds in batches(tokenizer, texts, args.batch, grouped=True):
            session.run(None, feeds)

    pa = perf_analyzer()
    load_start = os.getloadavg()
    rounds = []
    served = Served(repository, BUILD / f"stack-{args.model}-server.log")
    try:
        for i in range(args.rounds):
            bare_rate = best_rate(bare, len(texts), repeat=1)
            result = run_perf_analyzer(pa, served, "grpc", data, args.concurrency, args.interval_ms)
            ratio = result["texts_per_s"] / bare_rate
            rounds.append({"bare_texts_per_s": round(bare_rate, 1), "served_texts_per_s": round(result["texts_per_s"], 1),
                           "ratio": round(ratio, 3), "cpu_ms_per_text": result["cpu_ms_per_text"]})
            print(f"round {i + 1}: bare {bare_rate:.1f} texts/s, served {result['texts_per_s']:.1f} texts/s, "
                  f"{ratio:.3f}x; CPU ms per text served {result['cpu_ms_per_text']}", flush=True)
    finally:
        served.stop()
    load_end = os.getloadavg()
    median = statistics.median(r["ratio"] for r in rounds)
    print(f"{args.model} passages ({len(texts)}, {workloads.mean_tokens(tokenizer, texts):.1f} tokens): "
          f"served gRPC c={args.concurrency} / bare ORT bs{args.batch} grouped = {median:.3f}x (median of "
          f"{len(rounds)} rounds)")
    if args.json_out:
        args.json_out.write_text(json.dumps({"model": args.model, "concurrency": args.concurrency, "batch": args.batch,
                                             "rounds": rounds, "median_ratio": median}, indent=2) + "\n")
    if args.write_docs:
        write_sections(ROOT / "docs" / "benchmarks.md", section(args, rounds, median, load_start, load_end))


def section(args, rounds: list[dict], median: float, load_start, load_end) -> str:
    m = machine()
    command = (f"python -m bench.stack --model {args.model} --texts {args.texts} --concurrency {args.concurrency} "
               f"--rounds {args.rounds} --interval-ms {args.interval_ms}")
    stages = list(rounds[0]["cpu_ms_per_text"])
    lines = [f"## Serving stack cost: {args.model}", "",
             f"`{command}`, {datetime.date.today().isoformat()}, {m['cpu']} ({m['cores']} cores; ISA: {', '.join(m['isa'])}); load average "
             f"{load_start[0]:.2f} at the start, {load_end[0]:.2f} at the end (the benchmark itself). Served: perf_analyzer "
             f"gRPC, {args.concurrency} single-passage requests in flight; bare: ONNX Runtime in process, {args.threads} "
             f"threads, tokenization included, texts sorted by length in batches of {args.batch}. Rounds alternate.",
             "", f"**Served / bare: {median:.3f}x** (median of {len(rounds)} rounds).", "",
             "| round | bare texts/s | served texts/s | served / bare | CPU ms per text served: " + ", ".join(stages) + " |",
             "|---|---|---|---|---|"]
    for i, r in enumerate(rounds, 1):
        lines.append(f"| {i} | {r['bare_texts_per_s']} | {r['served_texts_per_s']} | {r['ratio']:.3f}x | "
                     + ", ".join(f"{r['cpu_ms_per_text'][k]:.2f}" for k in stages) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
