"""The benchmark command runs end to end on a tiny setting (figures are not judged here)."""

import json
import subprocess
import sys

from tests.conftest import ROOT


def test_benchmark_runs_on_a_tiny_setting():
    result = subprocess.run([sys.executable, "-m", "bench.run", "--quick"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    report = json.loads((ROOT / "build" / "bench" / "benchmarks-quick.json").read_text())
    assert report["peak_gflops"] > 0
    for kind in ("queries", "passages"):
        w = report["models"]["splade-tiny"][kind]
        assert w["mean_tokens"] > (100 if kind == "passages" else 4)
        assert set(w["served"]) == {"grpc_c1", "grpc_c4", "http_c1", "http_c4"}
        for run in w["served"].values():
            assert run["texts_per_s"] > 0 and 0 < run["p50_ms"] <= run["p99_ms"]
            assert run["stages"]["splade_encoder"]["texts_per_execution"] >= 1
        assert any(k.startswith("unfused_numpy") for k in w["in_process"])
        assert w["in_process"]["sentence_transformers_bs32"] > 0
        assert 0 <= w["int8"]["recall_top50"] <= 1
