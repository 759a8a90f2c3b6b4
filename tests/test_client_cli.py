"""``python -m client``: embed, encode (interrupted and resumed), search, evaluate, health, and its errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import ir_measures
import numpy as np
import pytest

from client import SpladeClient
from client.cli import main
from client.corpus import load_beir
from client.evaluate import measure_run
from tests.conftest import ROOT, assemble_variant, free_port, running

BEIR = Path(__file__).parent / "fixtures" / "beir_tiny"


@pytest.fixture
def grpc_url(server):
    return f"grpc://{server.grpc_url}"


def cli(capsys, *args: str) -> tuple[int, str, str]:
    """Run the command line in this process: (exit status, stdout, stderr)."""
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def cli_process(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``python -m client`` as its own process."""
    return subprocess.run([sys.executable, "-m", "client", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def output_ids(path: Path) -> list:
    return [json.loads(line)["id"] for line in path.read_text().splitlines()]


# --- embed -------------------------------------------------------------------------------


def test_embed_human_form_shows_top_terms_as_words(capsys, grpc_url):
    code, out, err = cli(capsys, "embed", "--url", grpc_url, "what is the capital of france", "--show", "3")
    assert code == 0 and not err
    lines = out.splitlines()
    assert lines[0] == "what is the capital of france"
    assert lines[1].split()[0] == "capital" and float(lines[1].split()[1]) == pytest.approx(2.79, abs=0.01)
    assert [line.split()[0] for line in lines[1:4]] == ["capital", "france", "french"]
    assert "more not shown" in lines[4]


@pytest.mark.parametrize("fmt", ["native", "tei", "m3"])
def test_embed_formats(capsys, server, fmt):
    url = f"http://{server.http_url}"
    texts = ["what is the capital of france", "sparse retrieval"]
    code, out, _ = cli(capsys, "embed", "--url", url, "--format", fmt, "--top-k", "5", *texts)
    assert code == 0
    printed = json.loads(out)
    with SpladeClient(url) as c:
        vectors = c.encode(texts, top_k=5, return_tokens=True)
    expected = {"native": [v.to_native() for v in vectors], "tei": [v.to_tei() for v in vectors],
                "m3": [v.to_lexical_weights() for v in vectors]}[fmt]
    assert printed == expected
    assert all(len(v) == 5 for v in vectors)


# --- encode ------------------------------------------------------------------------------


def test_encode_writes_each_record_once_in_order(capsys, tmp_path, grpc_url):
    corpus = tmp_path / "corpus.jsonl"
    records = [{"_id": "a", "title": "Paris", "body": "the capital of france"},
               {"_id": 7, "title": "", "body": "an integer id"},
               {"_id": "a", "title": "again", "body": "a repeated id is encoded once"},
               {"_id": "c", "body": "no title"}]
    corpus.write_text("".join(json.dumps(r) + "\n" for r in records) + "\n")
    out = tmp_path / "vectors.jsonl"
    args = ["encode", "--url", grpc_url, "--input", str(corpus), "--output", str(out), "--id-field", "_id",
            "--text-field", "title,body", "--tokens"]
    code, stdout, err = cli(capsys, *args, "--progress", "on")
    assert code == 0
    assert "encoded 3 texts" in stdout and "texts/s" in stdout and "1 skipped" in stdout
    assert "encode: 100%" in err and "4/4" in err  # the progress bar counts every record read
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["id"] for line in lines] == ["a", 7, "c"]
    with SpladeClient(grpc_url) as c:
        expected = c.encode(["Paris the capital of france", "an integer id", "no title"], return_tokens=True)
    assert [{k: v for k, v in line.items() if k != "id"} for line in lines] == [v.to_native() for v in expected]
    # Nothing left to do: a second run adds nothing.
    code, stdout, _ = cli(capsys, *args)
    assert code == 0 and "encoded 0 texts" in stdout and len(out.read_text().splitlines()) == 3


def test_encode_formats_and_input_errors(capsys, tmp_path, grpc_url):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"id": "x", "text": "hello world"}\n')
    for fmt, key in (("tei", "embed_sparse"), ("m3", "lexical_weights")):
        out = tmp_path / f"{fmt}.jsonl"
        assert cli(capsys, "encode", "--url", grpc_url, "--input", str(corpus), "--output", str(out),
                   "--format", fmt)[0] == 0
        assert list(json.loads(out.read_text())) == ["id", key]
    corpus.write_text('{"id": "x", "text": "hello"}\n{"id": "y", "text": \n')
    code, _, err = cli(capsys, "encode", "--url", grpc_url, "--input", str(corpus), "--output", str(tmp_path / "o"))
    assert code == 1 and err.strip() == f"error: {corpus}:2: not valid JSON (Expecting value)"


def wait_for_lines(path: Path, at_least: int, process: subprocess.Popen, timeout: float = 60) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        n = path.read_bytes().count(b"\n") if path.exists() else 0
        if n >= at_least:
            return n
        assert process.poll() is None, process.communicate()
        time.sleep(0.05)
    raise AssertionError(f"{path} did not reach {at_least} lines")


def test_encode_is_resumable_after_sigkill_and_sigint(tmp_path, grpc_url):
    # Enough texts that each interruption lands mid-run even on a fast, idle machine.
    n = 4000
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"id": f"doc-{i}", "text": f"passage {i} about topic {i % 37}"}) + "\n"
                              for i in range(n)))
    out = tmp_path / "vectors.jsonl"
    # One text per request, one request at a time: thousands of round trips, so
    # each interruption lands mid-run even when the test process itself is
    # descheduled for seconds on a loaded machine.
    args = [sys.executable, "-m", "client", "encode", "--url", grpc_url, "--input", str(corpus),
            "--output", str(out), "--batch-size", "1", "--max-in-flight", "1"]

    first = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_lines(out, 200, first)
    first.send_signal(signal.SIGKILL)
    first.wait()
    after_kill = output_ids(out)
    assert 200 <= len(after_kill) < n
    # What a kill in the middle of a write would leave: part of a line.
    with open(out, "ab") as f:
        f.write(b'{"id":"doc-999999","indices":[1,2')

    # A shell that runs the suite as a background job leaves SIGINT ignored, and
    # Python then keeps it ignored: give the CLI the disposition a terminal would.
    second = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    wait_for_lines(out, len(after_kill) + 100, second)
    interrupted_at = time.monotonic()
    second.send_signal(signal.SIGINT)
    _, err = second.communicate(timeout=60)
    assert second.returncode == 130
    assert time.monotonic() - interrupted_at < 5  # Ctrl-C stops at once, in-flight requests cancelled
    assert "dropped an incomplete last line (33 bytes)" in err and "run the same command again to resume" in err
    after_sigint = output_ids(out)
    assert after_sigint[:len(after_kill)] == after_kill and len(after_sigint) < n

    third = subprocess.run([*args[:-4], "--batch-size", "64"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert third.returncode == 0, third.stderr
    assert f"{n} vectors in" in third.stdout and "dropped" not in third.stderr
    ids = output_ids(out)
    assert ids == [f"doc-{i}" for i in range(n)]  # every id once, in input order
    # The resumed lines are the vectors of their texts.
    with SpladeClient(grpc_url) as c:
        sample = [0, len(after_kill), len(after_sigint), n - 1]
        expected = c.encode([f"passage {i} about topic {i % 37}" for i in sample])
    lines = out.read_text().splitlines()
    for i, vector in zip(sample, expected):
        got = json.loads(lines[i])
        assert got["indices"] == vector.to_native()["indices"]
        np.testing.assert_allclose(got["values"], vector.values, atol=1e-4)


# --- search and evaluate -------------------------------------------------------------------


def test_search_shows_top_documents_and_matched_terms(capsys, tmp_path, grpc_url):
    vectors = tmp_path / "beir.jsonl"
    assert cli(capsys, "encode", "--url", grpc_url, "--input", str(BEIR / "corpus.jsonl"), "--output", str(vectors),
               "--id-field", "_id", "--text-field", "title", "--text-field", "text")[0] == 0
    code, out, _ = cli(capsys, "search", "--url", grpc_url, "--vectors", str(vectors), "--json", "-k", "3",
                       "tallest mountain in the world", "who wrote hamlet")
    assert code == 0
    answers = [json.loads(line) for line in out.splitlines()]
    assert [a["query"] for a in answers] == ["tallest mountain in the world", "who wrote hamlet"]
    assert [a["hits"][0]["id"] for a in answers] == ["d13", "d19"]
    assert all(len(a["hits"]) == 3 for a in answers)
    top = answers[0]["hits"][0]
    assert "mountain" in [t["token"] for t in top["terms"]]
    assert top["score"] == pytest.approx(sum(t["query_weight"] * t["document_weight"] for t in top["terms"]), rel=1e-4)
    scores = [h["score"] for h in answers[0]["hits"]]
    assert scores == sorted(scores, reverse=True)

    code, out, _ = cli(capsys, "search", "--url", grpc_url, "--vectors", str(vectors), "--corpus",
                       str(BEIR / "corpus.jsonl"), "--id-field", "_id", "--text-field", "title,text", "-k", "1",
                       "planet with rings")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "planet with rings"
    assert lines[1].split()[:2] == ["1.", "d38"] and "ring" in lines[1]
    assert lines[2].strip().startswith("Saturn Saturn is the sixth planet")


def test_evaluate_on_the_beir_fixture(tmp_path, grpc_url):
    run_file = tmp_path / "run.trec"
    result = cli_process("evaluate", "--url", grpc_url, "--dataset", str(BEIR), "--json", "--run", str(run_file))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["documents"] == 40 and report["queries"] == 20
    assert report["library"].startswith("ir-measures ")
    metrics = report["metrics"]
    assert set(metrics) == {"nDCG@10", "MRR@10", "Recall@100"}
    assert all(0.0 <= v <= 1.0 for v in metrics.values())
    # Observed with SPLADE-tiny: nDCG@10 0.99, MRR@10 1.0, Recall@100 1.0.
    assert metrics["nDCG@10"] >= 0.85 and metrics["MRR@10"] >= 0.85 and metrics["Recall@100"] >= 0.95

    # The numbers are ir-measures' own on the run the command wrote.
    qrels = load_beir(BEIR).qrels
    run = list(ir_measures.read_trec_run(str(run_file)))
    theirs = ir_measures.calc_aggregate([ir_measures.nDCG @ 10, ir_measures.RR @ 10, ir_measures.R @ 100], qrels, run)
    assert metrics == pytest.approx({"nDCG@10": theirs[ir_measures.nDCG @ 10], "MRR@10": theirs[ir_measures.RR @ 10],
                                     "Recall@100": theirs[ir_measures.R @ 100]}, abs=1e-9)
    # Far above chance: the same measures on a random ranking of the corpus.
    rng = np.random.default_rng(0)
    docs = [json.loads(line)["_id"] for line in (BEIR / "corpus.jsonl").read_text().splitlines()]
    random_run = {q: {d: float(s) for d, s in zip(docs, rng.random(len(docs)))} for q in qrels}
    chance = measure_run(qrels, random_run)
    assert chance["nDCG@10"] < 0.4 and metrics["nDCG@10"] > chance["nDCG@10"] + 0.4


def test_evaluate_human_form(capsys, grpc_url):
    code, out, _ = cli(capsys, "evaluate", "--url", grpc_url, "--dataset", str(BEIR), "--measure", "P@1")
    assert code == 0
    assert out.startswith("beir_tiny: 40 documents, 20 queries")
    assert out.splitlines()[1].split()[0] == "P@1"


# --- health and errors --------------------------------------------------------------------


def test_health(capsys, grpc_url):
    code, out, _ = cli(capsys, "health", "--url", grpc_url)
    assert code == 0
    assert "live, ready (Triton 2.51.0)" in out and "splade  ready, inference" in out


@pytest.mark.parametrize("case", ["server down (gRPC)", "server down (HTTP)", "HTTP to the gRPC port",
                                  "gRPC to the HTTP port", "bad scheme", "URL with a path", "model not ready",
                                  "unknown model", "bad top_k", "missing input"])
def test_errors_are_one_readable_line(server, case):
    down = f"127.0.0.1:{free_port()}"
    args, expected = {
        "server down (gRPC)": (["health", "--url", f"grpc://{down}"], f"error: cannot reach the server at grpc://{down}"),
        "server down (HTTP)": (["embed", "x", "--url", f"http://{down}"], f"error: cannot reach the server at http://{down}"),
        "HTTP to the gRPC port": (["embed", "x", "--url", f"http://{server.grpc_url}"],
                                  "error: http://{} did not answer as a Triton HTTP endpoint".format(server.grpc_url)),
        "gRPC to the HTTP port": (["embed", "x", "--url", f"grpc://{server.http_url}"],
                                  f"error: cannot reach the server at grpc://{server.http_url}"),
        "bad scheme": (["health", "--url", "ftp://127.0.0.1:1"], "error: unsupported URL scheme 'ftp'"),
        "URL with a path": (["health", "--url", f"http://{server.http_url}/v2"], "error: a server URL is"),
        "model not ready": (["health", "--url", f"grpc://{server.grpc_url}", "--model", "nope"],
                            f"error: model 'nope' is not ready at grpc://{server.grpc_url}"),
        "unknown model": (["embed", "x", "--url", f"http://{server.http_url}", "--model", "nope"],
                          f"error: the server at http://{server.http_url} does not serve model 'nope'"),
        "bad top_k": (["embed", "x", "--url", f"grpc://{server.grpc_url}", "--top-k", "-3"],
                      "error: in ensemble 'splade', top_k must be an integer between 0 and 2147483647"),
        "missing input": (["encode", "--url", f"grpc://{server.grpc_url}", "--input", "missing.jsonl",
                           "--output", os.devnull], "error: missing.jsonl: No such file or directory"),
    }[case]
    result = cli_process(*args, "--retries", "1")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith(expected), lines[0]


def test_usage_errors_exit_2():
    result = cli_process("embed")
    assert result.returncode == 2 and "usage:" in result.stderr


# --- bulk encoding: records the server refuses, windows per request --------------------------


def refused_corpus(path: Path) -> list[dict]:
    # "big" is over the server's max_text_bytes (65536) in truncate mode: refused, alone or with others.
    records = [{"id": "a", "text": "paris is the capital of france"}, {"id": "big", "text": "word " * 14000},
               {"id": "c", "text": "rome is in italy"}, {"id": "d", "text": "the tallest mountain"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return records


def test_encode_skips_a_refused_record_and_writes_every_other_once(capsys, tmp_path, grpc_url):
    corpus, out = tmp_path / "corpus.jsonl", tmp_path / "vectors.jsonl"
    records = refused_corpus(corpus)
    code, stdout, err = cli(capsys, "encode", "--url", grpc_url, "--input", str(corpus), "--output", str(out),
                            "--progress", "off")
    assert code == 0, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{corpus}: record 'big' skipped: "), err
    assert "70000 bytes; the limit is 65536 bytes (max_text_bytes)" in lines[0]
    assert "encoded 3 texts" in stdout and "1 refused by the server" in stdout
    assert output_ids(out) == ["a", "c", "d"]
    with SpladeClient(grpc_url) as c:
        expected = c.encode_corpus([r["text"] for r in records if r["id"] != "big"])
    assert [{k: v for k, v in json.loads(line).items() if k != "id"} for line in out.read_text().splitlines()] == [
        v.to_native() for v in expected]


@pytest.mark.parametrize("flags, message, written", [
    # --on-error stop: every record before the refused one, nothing after.
    (("--on-error", "stop"), "error: record 'big' was refused by the server: ", ["a"]),
    # A setting the server refuses is one error for the run, not one per record.
    (("--top-k", "-3"), "error: in ensemble 'splade', top_k must be an integer", []),
], ids=["on_error_stop_ends_at_the_refused_record", "a_refused_setting_is_not_blamed_on_each_record"])
def test_encode_stops_with_one_line(capsys, tmp_path, grpc_url, flags, message, written):
    corpus, out = tmp_path / "corpus.jsonl", tmp_path / "vectors.jsonl"
    refused_corpus(corpus)
    code, _, err = cli(capsys, "encode", "--url", grpc_url, "--input", str(corpus), "--output", str(out),
                       *flags, "--progress", "off")
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), err
    assert output_ids(out) == written


def failures(server, model: str = "splade") -> float:
    """Triton's count of the model's failed requests."""
    total = 0.0
    for line in server.metrics().splitlines():
        if line.startswith("nv_inference_request_failure{") and f'model="{model}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.fixture(scope="module")
def few_windows_server(tmp_path_factory):
    """The default pipeline with max_windows 16 (instead of 512): a request of a few long texts is over it."""
    repository = assemble_variant(tmp_path_factory.mktemp("few_windows"),
                                  tokenizer={"parameters": {"max_windows": 16}})
    with running(repository, tmp_path_factory.mktemp("few_windows_triton") / "server.log") as srv:
        yield srv


def test_chunked_encode_batches_within_max_windows(capsys, tmp_path, few_windows_server):
    """10 texts of 2 windows each: as one request (10 texts, 12 KB: within the count and bytes limits)
    they would make 20 windows, over the server's max_windows (16); counted before sending, no request
    is refused."""
    server = few_windows_server
    url = f"grpc://{server.grpc_url}"
    corpus, out = tmp_path / "corpus.jsonl", tmp_path / "vectors.jsonl"
    texts = [f"topic{i} " + "x " * 600 for i in range(10)]
    corpus.write_text("".join(json.dumps({"id": f"doc-{i}", "text": t}) + "\n" for i, t in enumerate(texts)))
    before = failures(server)
    code, stdout, err = cli(capsys, "encode", "--url", url, "--input", str(corpus), "--output", str(out),
                            "--overflow", "chunk", "--max-windows", "16", "--progress", "off")
    assert code == 0, err
    assert not err and "encoded 10 texts" in stdout and "0 refused" in stdout
    assert output_ids(out) == [f"doc-{i}" for i in range(10)]
    assert failures(server) == before  # no request was refused and split
    with SpladeClient(url) as c:
        alone = c.encode_corpus(texts[-1], overflow="chunk")
    last = json.loads(out.read_text().splitlines()[-1])
    assert last["indices"] == alone.to_native()["indices"]
    np.testing.assert_allclose(last["values"], alone.values, atol=1e-4)


def test_default_requests_stay_within_the_default_max_windows():
    """64 texts of 9 windows: under the count (64) and bytes (1 MiB) limits, yet 576 windows together."""
    from client.bulk import MAX_WINDOWS, request_batches, windows_bound
    from client.core import MAX_BATCH_SIZE, MAX_REQUEST_BYTES

    texts = ["x " * 4100] * 64
    assert windows_bound(texts[0]) == 9 and sum(len(t.encode()) for t in texts) < MAX_REQUEST_BYTES
    requests = list(request_batches(texts, str, batch_size=MAX_BATCH_SIZE, max_request_bytes=MAX_REQUEST_BYTES,
                                    max_windows=MAX_WINDOWS))
    assert [len(r) for r in requests] == [56, 8]  # 56 x 9 = 504 windows
