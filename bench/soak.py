#!/usr/bin/env python3
"""Soak: hold the ``splade`` ensemble under bounded high concurrency for a set time.

Starts the service the way ``script/serve`` does (the launcher, on 127.0.0.1,
free ports), then for each protocol drives it with ``--concurrency`` client
threads, each keeping one request in flight, for ``--duration`` seconds. The
traffic mixes single search queries with indexing batches of passages. Every
response is checked against the first response for the same texts (same terms,
weights within 1e-3), so a wrong answer counts as a failure, not a success.

Reports requests sent, failures (by message), p50/p99 latency, the RSS of
tritonserver and of each Python-backend stub (after a warm-up, every
``--sample-every`` s, at the end) and /dev/shm usage before the start, during
the run and after the stop. Exits 1 if any request failed or was wrong.

    .venv/bin/python -m bench.soak --duration 60                  # gRPC, then HTTP
    .venv/bin/python -m bench.soak --protocols grpc --concurrency 512 --duration 15   # overload
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tokenizers import Tokenizer
from tritonclient.utils import InferenceServerException

from bench import workloads
from splade_triton.launcher.harness import Launched
from splade_triton.launcher.stubs import stub_processes

ROOT = Path(__file__).resolve().parents[1]
PROTOCOLS = {"grpc": grpcclient, "http": httpclient}
SHM = Path("/dev/shm")


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def shm_used() -> int:
    st = os.statvfs(SHM)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


class Service(Launched):
    """The launcher and its tritonserver, on free ports of 127.0.0.1 (the project's harness)."""

    def __init__(self, repository: Path, log_path: Path):
        super().__init__(repository, log_path)
        self.start()

    def wait_ready(self, timeout_s: float | None = None) -> None:
        try:
            super().wait_ready(timeout_s)
        except RuntimeError as e:
            raise SystemExit(f"the server did not become ready: {e}") from None

    def memory(self) -> dict:
        """RSS (KiB) of tritonserver and each stub; bytes of the stubs' /dev/shm regions."""
        pid = self.tritonserver_pid()
        stubs = stub_processes(pid)
        rss = {"tritonserver": rss_kib(pid)}
        rss.update({s.instance: rss_kib(s.pid) for s in sorted(stubs, key=lambda s: s.instance)})
        regions = {s.shm_region for s in stubs}
        return {"rss_kib": rss, "regions": sorted(regions),
                "regions_bytes": sum((SHM / r).stat().st_size for r in regions if (SHM / r).exists())}


def make_requests(tokenizer: Tokenizer) -> list[list[str]]:
    """Search traffic: mostly single queries, every fifth request an indexing batch of 8 passages."""
    queries = workloads.make(tokenizer, "queries", 64, seed=7)
    passages = workloads.make(tokenizer, "passages", 64, seed=7)
    requests = []
    for i in range(64):
        requests.append([queries[i]])
        if i % 4 == 3:
            start = (i // 4) * 8 % 64
            requests.append(passages[start:start + 8])
    return requests


class Load:
    """``concurrency`` threads, each with one request in flight, until the deadline."""

    def __init__(self, service: Service, protocol: str, requests: list[list[str]], concurrency: int):
        self.service, self.protocol, self.requests, self.concurrency = service, protocol, requests, concurrency
        self.latencies: list[float] = []
        self.failures: Counter[str] = Counter()
        self.failure_latencies: list[float] = []
        self.reference: dict[tuple[str, ...], list[dict[int, float]]] = {}
        self._lock = threading.Lock()

    def _call(self, client, texts):
        mod = PROTOCOLS[self.protocol]
        data = np.array([[t.encode()] for t in texts], dtype=object)
        tensor = mod.InferInput("text", list(data.shape), "BYTES")
        tensor.set_data_from_numpy(data)
        outputs = [mod.InferRequestedOutput("indices"), mod.InferRequestedOutput("values")]
        if self.protocol == "grpc":
            result = client.infer("splade", [tensor], outputs=outputs, client_timeout=120)
        else:
            result = client.infer("splade", [tensor], outputs=outputs)
        indices, values = result.as_numpy("indices"), result.as_numpy("values")
        return [{int(i): float(v) for i, v in zip(row_i, row_v) if i >= 0} for row_i, row_v in zip(indices, values)]

    def _check(self, texts, rows) -> str | None:
        key = tuple(texts)
        with self._lock:
            expected = self.reference.setdefault(key, rows)
        if len(rows) != len(texts):
            return f"wrong answer: {len(rows)} rows for {len(texts)} texts"
        for got, want in zip(rows, expected):
            if got.keys() != want.keys() or any(abs(got[k] - want[k]) > 1e-3 for k in want):
                return "wrong answer: terms or weights differ from an earlier answer for the same texts"
        return None

    def _worker(self, index: int, deadline: float) -> None:
        mod = PROTOCOLS[self.protocol]
        url = self.service.url(self.protocol)
        client = mod.InferenceServerClient(url) if self.protocol == "grpc" else mod.InferenceServerClient(
            url, connection_timeout=120, network_timeout=120)
        n = index
        while time.monotonic() < deadline:
            texts = self.requests[n % len(self.requests)]
            n += self.concurrency
            start = time.monotonic()
            try:
                error = self._check(texts, self._call(client, texts))
            except InferenceServerException as e:
                error = f"{e.status()}: {e.message()[:120]}"
            except Exception as e:  # transport errors: count them, keep going
                error = f"{type(e).__name__}: {str(e)[:120]}"
            elapsed = time.monotonic() - start
            with self._lock:
                if error is None:
                    self.latencies.append(elapsed)
                else:
                    self.failures[error] += 1
                    self.failure_latencies.append(elapsed)

    def run(self, duration: float) -> None:
        deadline = time.monotonic() + duration
        threads = [threading.Thread(target=self._worker, args=(i, deadline), daemon=True) for i in range(self.concurrency)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()


def percentiles(values: list[float]) -> str:
    if not values:
        return "-"
    p50, p99 = np.percentile(np.array(values) * 1000, [50, 99])
    return f"p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {max(values) * 1000:.1f} ms"


def run_protocol(service: Service, protocol: str, requests, args, warmup: float) -> dict:
    warm = Load(service, protocol, requests, args.concurrency)
    warm.run(warmup)
    start_memory = service.memory()
    load = Load(service, protocol, requests, args.concurrency)
    load.reference = warm.reference  # answers must agree across the whole run
    samples = [(0, start_memory["rss_kib"])]
    done = threading.Event()

    def sample():
        t0 = time.monotonic()
        while not done.wait(args.sample_every):
            samples.append((round(time.monotonic() - t0), service.memory()["rss_kib"]))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.monotonic()
    load.run(args.duration)
    elapsed = time.monotonic() - started
    done.set()
    sampler.join()
    end_memory = service.memory()
    failed = sum(load.failures.values())
    return {
        "protocol": protocol,
        "concurrency": args.concurrency,
        "seconds": round(elapsed, 1),
        "requests": len(load.latencies) + failed,
        "succeeded": len(load.latencies),
        "failed": failed,
        "failures": dict(load.failures.most_common()),
        "requests_per_s": round((len(load.latencies) + failed) / elapsed, 1),
        "texts_per_request_mean": round(float(np.mean([len(r) for r in requests])), 2),
        "latency_ok": percentiles(load.latencies),
        "latency_failed": percentiles(load.failure_latencies),
        "rss_kib_samples": samples + [(round(elapsed), end_memory["rss_kib"])],
        "rss_kib_start": start_memory["rss_kib"],
        "rss_kib_end": end_memory["rss_kib"],
        "stub_shm_bytes_start": start_memory["regions_bytes"],
        "stub_shm_bytes_end": end_memory["regions_bytes"],
    }


def print_phase(r: dict) -> None:
    print(f"\n== {r['protocol']}: concurrency {r['concurrency']}, {r['seconds']} s")
    print(f"requests {r['requests']} ({r['requests_per_s']}/s, {r['texts_per_request_mean']} texts/request on average), "
          f"succeeded {r['succeeded']}, failed {r['failed']}")
    for message, count in r["failures"].items():
        print(f"  {count} x {message}")
    print(f"latency (succeeded): {r['latency_ok']}")
    if r["failed"]:
        print(f"latency (failed):    {r['latency_failed']}")
    print("RSS MiB              start      end   growth   samples every "
          f"{r['rss_kib_samples'][1][0] if len(r['rss_kib_samples']) > 2 else '-'} s")
    for name, start in r["rss_kib_start"].items():
        end = r["rss_kib_end"].get(name)
        series = " ".join(f"{s[1].get(name, 0) / 1024:.0f}" for s in r["rss_kib_samples"])
        growth = "gone" if end is None else f"{(end - start) / 1024:+.1f}"
        print(f"  {name:<16} {start / 1024:8.1f} {(end or 0) / 1024:8.1f} {growth:>8}   {series}")
    print(f"stubs' /dev/shm regions: {r['stub_shm_bytes_start'] / 2**20:.0f} MiB at start, "
          f"{r['stub_shm_bytes_end'] / 2**20:.0f} MiB at end")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=60, help="seconds of load per protocol (default 60)")
    parser.add_argument("--concurrency", type=int, default=64, help="requests in flight (default 64)")
    parser.add_argument("--protocols", default="grpc,http")
    parser.add_argument("--warmup", type=float, default=30,
                        help="seconds of load before the first start figures (default 30; 5 for later protocols)")
    parser.add_argument("--sample-every", type=float, default=15, help="seconds between RSS samples")
    parser.add_argument("--repository", type=Path, default=ROOT / "model_repository")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)

    tokenizer = Tokenizer.from_file(str(args.repository / "splade_tokenizer" / "1" / "tokenizer.json"))
    requests = make_requests(tokenizer)
    shm_before = shm_used()
    log_path = Path(tempfile.mkdtemp(prefix="soak-")) / "server.log"
    service = Service(args.repository.resolve(), log_path)
    results, regions = [], set()
    try:
        service.wait_ready()
        shm_ready = shm_used()
        for i, protocol in enumerate(args.protocols.split(",")):
            # The first warm-up lets the encoder's ONNX Runtime arena reach its
            # high-water mark; later protocols only open their connections.
            results.append(run_protocol(service, protocol, requests, args, args.warmup if i == 0 else 5))
            regions.update(service.memory()["regions"])
            print_phase(results[-1])
        shm_end = shm_used()
    finally:
        code = service.stop()
    time.sleep(0.5)
    shm_after = shm_used()
    left = sorted(r for r in regions if (SHM / r).exists())
    summary = {
        "results": results,
        "server_exit_code": code,
        "shm_used_bytes": {"before start": shm_before, "ready": shm_ready, "end of load": shm_end, "after stop": shm_after},
        "stub_regions_left_after_stop": left,
        "server_log": str(log_path),
    }
    print("\n/dev/shm used (whole tmpfs, other processes included): "
          + ", ".join(f"{k} {v / 2**20:.0f} MiB" for k, v in summary["shm_used_bytes"].items()))
    print(f"stub regions left after stop: {len(left)}; server exit code {code}; log {log_path}")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))
    failed = sum(r["failed"] for r in results)
    sys.exit(1 if failed or left or code else 0)


if __name__ == "__main__":
    main()
