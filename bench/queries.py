"""Query-side cost: an inference-free query (static weight table) against the encoder, served.

    python -m bench.queries                 # perf_analyzer, gRPC, concurrency 1 and 16; writes build/long_documents/queries.json
    python -m bench.queries --write-docs    # and renders docs/long_documents.md

One repository, three pipelines, the same short real queries (the docstring
summary lines of bench.long_documents' fixture, one per request):

- ``router`` on build/models/splade-router-tiny: ``input_type=query`` is the
  static side (a weight per token, looked up in numpy, no transformer);
  ``input_type=document`` runs the masked LM;
- ``pair`` on build/models/splade-pair-tiny (when exported): each side its own graph;
- ``splade`` (SPLADE-tiny) for reference: both sides run the encoder.

The fixture models are tiny random BERTs: their transformer costs little, so
the gap to a real-size document encoder is larger than measured here.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

from bench import long_documents, workloads
from splade_triton.artifacts.repository import Pipeline, assemble, default_pipelines
from splade_triton.launcher.harness import Launched

ROOT = Path(__file__).resolve().parents[1]
PERF_ANALYZER = ROOT / "build" / "bench" / "perf_analyzer"
MODELS = ROOT / "build" / "models"


def pipelines() -> list[Pipeline]:
    out = [next(p for p in default_pipelines() if p.name == "splade")]
    for name, folder in (("router", "splade-router-tiny"), ("pair", "splade-pair-tiny")):
        if (MODELS / folder / "model.onnx").is_file():
            out.append(Pipeline(name, "splade", MODELS / folder))
    return out


def encoder_stats(server, model: str) -> dict:
    with urllib.request.urlopen(f"http://{server.http_url}/v2/models/{model}/stats", timeout=10) as r:
        s = json.load(r)["model_stats"][0]
    return {"requests": int(s["inference_stats"]["success"]["count"]), "executions": int(s["execution_count"]),
            "infer_ns": int(s["inference_stats"]["compute_infer"]["ns"])}


def perf(server, model: str, data: Path, concurrency: int, input_type: str, interval_ms: int) -> dict:
    """One perf_analyzer measurement; on a noisy machine (no 50%-stable windows), again accepting any
    variation, and the threshold used is recorded."""
    env = {"LD_LIBRARY_PATH": str(PERF_ANALYZER / "libs")}
    for stability in (50, 1000):
        with tempfile.NamedTemporaryFile(suffix=".csv") as report:
            args = [str(PERF_ANALYZER / "bin" / "perf_analyzer"), "-m", model, "-i", "grpc", "-u", server.grpc_url,
                    "--input-data", str(data), f"--concurrency-range={concurrency}",
                    "--request-parameter", f"input_type:{input_type}:string",
                    f"--measurement-interval={interval_ms}", f"--stability-percentage={stability}", "--max-trials=6",
                    "-f", report.name]
            before = encoder_stats(server, f"{model}_encoder")
            result = subprocess.run(args, env=env, capture_output=True, text=True)
            after = encoder_stats(server, f"{model}_encoder")
            if result.returncode == 0:
                row = next(csv.DictReader(open(report.name)))
                break
    else:
        raise SystemExit(f"perf_analyzer failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    d = {k: after[k] - before[k] for k in after}
    return {
        "command": " ".join(["perf_analyzer", *args[1:-2]]).replace(str(ROOT) + "/", "")
        .replace(server.grpc_url, "127.0.0.1:GRPC_PORT").replace(str(data), "QUERIES.json"),
        "stability_percentage": stability,
        "queries_per_s": float(row["Inferences/Second"]),
        "p50_ms": int(row["p50 latency"]) / 1000, "p99_ms": int(row["p99 latency"]) / 1000,
        # Time inside the encoder step per request (Triton's compute_infer), and requests per execution.
        "encoder_compute_ms_per_request": round(d["infer_ns"] / max(d["requests"], 1) / 1e6, 3),
        "requests_per_encoder_execution": round(d["requests"] / max(d["executions"], 1), 1),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", default="1,16")
    parser.add_argument("--interval", type=int, default=3000, help="ms per perf_analyzer window")
    parser.add_argument("--max-wait", type=float, default=900, help="seconds to wait for others' benchmarks")
    parser.add_argument("--write-docs", action="store_true", help="render docs/long_documents.md")
    args = parser.parse_args(argv)
    _, queries, _ = long_documents.load_fixture()
    texts = [q["text"] for q in queries]
    out_dir = long_documents.OUT
    data = workloads.write_perf_analyzer_json(texts, out_dir / "queries-perf.json")
    tok = long_documents.tokenizer()
    report = {"queries": len(texts), "mean_tokens": round(workloads.mean_tokens(tok, texts), 1), "runs": {}}
    chosen = pipelines()
    repository = assemble(out_dir / "repository-queries", chosen)
    with Launched(repository, out_dir / "queries-server.log") as server:
        report["waited_for"] = long_documents.wait_for_quiet(args.max_wait)
        for pipeline in chosen:
            for input_type in ("query", "document"):
                for c in [int(x) for x in args.concurrency.split(",")]:
                    load = long_documents.machine_load()
                    r = perf(server, pipeline.name, data, c, input_type, args.interval)
                    r["load_before_after"] = [load, long_documents.machine_load()]
                    report["runs"][f"{pipeline.name} {input_type} c{c}"] = r
                    print(pipeline.name, input_type, c, json.dumps(r), flush=True)
    report["models"] = {p.name: str(p.model.relative_to(ROOT)) for p in chosen}
    report["machine"] = long_documents.machine()
    report["command"] = "python -m bench.queries " + " ".join(sys.argv[1:] if argv is None else argv)
    (out_dir / "queries.json").write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))
    if args.write_docs:
        print(f"wrote {long_documents.write_docs()}")


if __name__ == "__main__":
    main()
