"""Limits, overload, dead stubs, SIGTERM and broken model files, on real tritonservers.

No mocks: stubs are killed with SIGKILL, the launcher gets real signals, and the
only timing assertions are generous bounds that tell "answered" from "hung".
"""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from tritonclient.utils import InferenceServerException

from client.core import SpladeClient
from splade_triton.launcher.admin import ADMIN_HEADER
from tests import triton
from tests.conftest import Server, assemble_variant, running

QUERY = "what is the capital of france"
PASSAGE = " ".join(["the quick brown fox jumps over the lazy dog near the river bank"] * 30)  # ~400 tokens
HANG = 30  # seconds: an answer later than this counts as a hang


@pytest.fixture(params=["http", "grpc"])
def protocol(request):
    return request.param


def assert_serving(protocol, server):
    c = triton.client(protocol, server)
    assert c.is_server_ready() and c.is_model_ready("splade")
    out = triton.encode(protocol, c, [QUERY], outputs=("tokens",))
    assert out["tokens"][0, :2].tolist() == [b"capital", b"france"]


def repository_index(server: Server) -> list[dict]:
    request = urllib.request.Request(f"http://{server.http_url}/v2/repository/index", data=b"{}",
                                     headers={ADMIN_HEADER: server.admin_key})
    with urllib.request.urlopen(request, timeout=10) as r:
        return json.loads(r.read())


def timed(fn):
    """(result or server error, seconds)."""
    start = time.monotonic()
    try:
        result = fn()
    except InferenceServerException as e:
        result = e
    return result, time.monotonic() - start


# --- limits --------------------------------------------------------------------------


def test_total_request_bytes_limit(protocol, server):
    c = triton.client(protocol, server)
    texts = ["y" * 64000] * 17  # each under max_text_bytes, 1088000 bytes together
    e = triton.error_of(lambda: triton.encode(protocol, c, texts, outputs=("indices",)))
    assert triton.is_invalid_arg(e), e
    assert "the request's texts are 1088000 bytes in total; the limit is 1048576 bytes (max_request_bytes)" in e.message()
    assert_serving(protocol, server)


def test_request_of_exactly_the_byte_limit_is_served(server):
    c = triton.client("grpc", server)
    out = triton.encode("grpc", c, ["z" * 65536] * 16, outputs=("indices",))  # 1048576 bytes
    assert out["indices"].shape[0] == 16


@pytest.mark.parametrize("parameters,message", [
    ({"top_k": 2**31}, "top_k must be an integer between 0 and 2147483647"),
    ({"top_k": 2**63 - 1}, "got 9223372036854775807"),
    ({"top_k": -(2**63)}, "got -9223372036854775808"),
    ({"top_k": 1e30}, "top_k must be an integer"),
    ({"min_weight": float("inf")}, "min_weight must be a finite number >= 0, got inf"),
    ({"min_weight": -1e308}, "min_weight must be a finite number >= 0"),
])
def test_huge_request_parameters(protocol, server, parameters, message):
    c = triton.client(protocol, server)
    e = triton.error_of(lambda: triton.encode(protocol, c, [QUERY], parameters=parameters))
    assert triton.is_invalid_arg(e), e
    assert message in e.message()
    assert_serving(protocol, server)


def test_top_k_beyond_int64(server):
    # gRPC carries int64 parameters: tritonclient will not even send it.
    with pytest.raises(ValueError, match="out of range"):
        triton.encode("grpc", triton.client("grpc", server), [QUERY], parameters={"top_k": 2**64})
    # HTTP carries JSON: Triton reads it as a float, which is refused.
    e = triton.error_of(lambda: triton.encode("http", triton.client("http", server), [QUERY], parameters={"top_k": 2**64}))
    assert triton.is_invalid_arg(e) and "top_k must be an integer" in e.message(), e
    assert_serving("http", server)


def test_huge_min_weight_keeps_no_terms(protocol, server):
    c = triton.client(protocol, server)
    out = triton.encode(protocol, c, [QUERY, "hello"], outputs=("indices", "embedding"), parameters={"min_weight": 1e308})
    assert out["indices"].shape == (2, 0)
    assert (out["embedding"] > 0).any()  # the full vector is still there


# --- overload --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_queue_server(tmp_path_factory):
    """The repository with a 2-request queue on the encoder, to overload it on purpose."""
    repository = assemble_variant(tmp_path_factory.mktemp("small-queue"),
                                  encoder={"config": "dynamic_batching { default_queue_policy { max_queue_size: 2 } }"})
    assert "max_queue_size: 2" in (repository / "splade_encoder" / "config.pbtxt").read_text()
    with running(repository, repository.parent / "server.log") as srv:
        yield srv


def test_overload_is_refused_fast_and_clearly(small_queue_server):
    def call(i):
        c = triton.client("grpc", small_queue_server)
        return timed(lambda: triton.encode("grpc", c, [f"{i} {PASSAGE}"] * 8, outputs=("indices",)))

    with ThreadPoolExecutor(48) as pool:
        results = list(pool.map(call, range(48)))
    refused = [(r, s) for r, s in results if isinstance(r, InferenceServerException)]
    served = [(r, s) for r, s in results if not isinstance(r, InferenceServerException)]
    assert refused and served
    for e, seconds in refused:
        assert e.status() == "StatusCode.UNAVAILABLE", e
        assert "Exceeds maximum queue size" in e.message()
        assert seconds < HANG
    # A refusal comes back while served requests still wait their turn.
    assert min(s for _, s in refused) < max(s for _, s in served)
    assert_serving("grpc", small_queue_server)
    assert_serving("http", small_queue_server)


# --- a Python-backend stub dies ------------------------------------------------------


@pytest.fixture
def own_server(repository, tmp_path):
    with running(repository, tmp_path / "server.log") as srv:
        yield srv


@pytest.fixture(scope="module")
def stub_server(repository, tmp_path_factory):
    with running(repository, tmp_path_factory.mktemp("stubs") / "server.log") as srv:
        yield srv


def stub_of(server: Server, model: str):
    (stub,) = [s for s in server.stubs() if s.model == model]
    return stub


def wait_until_served(server: Server, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    c = triton.client("grpc", server)
    last = None
    while time.monotonic() < deadline:
        try:
            out = triton.encode("grpc", c, [QUERY], outputs=("tokens",))
            assert out["tokens"][0, :2].tolist() == [b"capital", b"france"]
            return
        except InferenceServerException as e:
            last = e
            time.sleep(0.2)
    raise AssertionError(f"no request succeeded within {timeout} s ({last}):\n{server.log()[-3000:]}")


# /dev/shm regions of every stub seen by the stub tests: none may outlive the server.
REGIONS: set[str] = set()


def kill_and_recover(server: Server, model: str) -> float:
    """SIGKILL the model's stub; seconds until the ensemble answers again, on a new stub."""
    REGIONS.update(s.shm_region for s in server.stubs())
    victim = stub_of(server, model)
    message = f"stub(s) of model '{model}' died; reloading model '{model}'"
    before = server.log().count(message)
    os.kill(victim.pid, signal.SIGKILL)
    killed_at = time.monotonic()
    wait_until_served(server)
    seconds = time.monotonic() - killed_at
    for _ in range(5):  # settled, over both protocols
        assert_serving("grpc", server)
        assert_serving("http", server)
    assert stub_of(server, model).pid != victim.pid
    assert server.log().count(message) == before + 1
    return seconds


def test_requests_in_flight_on_a_killed_stub_get_an_error_not_a_hang(stub_server, capsys):
    server = stub_server
    stop = threading.Event()
    outcomes = []

    def keep_sending(i):
        c = triton.client("grpc", server)
        while not stop.is_set():
            outcomes.append(timed(lambda: c.infer(
                "splade", [triton.text_input("grpc", [f"{i} {PASSAGE}"] * 4)], client_timeout=120)))

    senders = [threading.Thread(target=keep_sending, args=(i,)) for i in range(8)]
    for t in senders:
        t.start()
    try:
        time.sleep(1.0)  # requests queued and running in the encoder
        REGIONS.update(s.shm_region for s in server.stubs())
        victim = stub_of(server, "splade_encoder")
        os.kill(victim.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        time.sleep(0.5)
    finally:
        stop.set()
        for t in senders:
            t.join(HANG + 30)
    assert not any(t.is_alive() for t in senders), "a request hung"
    errors = [r for r, _ in outcomes if isinstance(r, InferenceServerException)]
    assert errors, "no request was in flight when the stub died"
    for e in errors:
        assert "DEADLINE" not in e.status(), e
    assert max(seconds for _, seconds in outcomes) < HANG
    wait_until_served(server)
    recovery = time.monotonic() - killed_at
    assert stub_of(server, "splade_encoder").pid != victim.pid
    with capsys.disabled():
        messages = sorted({re.sub(r"\d+", "N", e.message())[:90] for e in errors})
        slowest = max(seconds for r, seconds in outcomes if isinstance(r, InferenceServerException))
        print(f"\nencoder stub killed under load: {len(errors)} requests failed ({messages}), "
              f"the slowest after {slowest:.1f} s; served again {recovery:.1f} s after the kill")


@pytest.mark.parametrize("model", ["splade_tokenizer", "splade_encoder", "splade_sparsify"])
def test_a_killed_stub_is_replaced_without_restarting_tritonserver(stub_server, model, capsys):
    server_pid = stub_server.tritonserver_pid()
    seconds = kill_and_recover(stub_server, model)
    assert stub_server.tritonserver_pid() == server_pid
    with capsys.disabled():
        print(f"\n{model} stub killed: served again after {seconds:.1f} s")


def test_after_dead_stubs_sigterm_still_exits_0_and_frees_shared_memory(stub_server):
    # One stub replaced earlier, one dead right now: Triton never unloads either.
    kill_and_recover(stub_server, "splade_sparsify")
    REGIONS.update(s.shm_region for s in stub_server.stubs())
    os.kill(stub_of(stub_server, "splade_encoder").pid, signal.SIGKILL)
    start = time.monotonic()
    assert stub_server.stop() == 0, stub_server.log()[-3000:]
    assert time.monotonic() - start < HANG
    left = [r for r in REGIONS if (Path("/dev/shm") / r).exists()]
    assert not left, f"/dev/shm regions outlived the server: {left}"


# --- SIGTERM ---------------------------------------------------------------------------


def test_sigterm_finishes_requests_in_flight_then_exits_0(own_server, capsys):
    server = own_server

    def call(i):
        c = triton.client("grpc" if i % 2 else "http", server)
        return timed(lambda: triton.encode("grpc" if i % 2 else "http", c, [f"{i} {PASSAGE}"] * 8, outputs=("indices",)))

    with ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(call, i) for i in range(16)]
        time.sleep(1.0)  # all sent; the encoder works through them
        assert not all(f.done() for f in futures), "the requests finished before the signal"
        server.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        time.sleep(0.5)
        late = timed(lambda: triton.encode("grpc", triton.client("grpc", server), [QUERY]))[0]
        results = [f.result(timeout=HANG + 30) for f in futures]
    code = server.process.wait(90)
    drain = time.monotonic() - signalled
    for result, _ in results:
        assert not isinstance(result, InferenceServerException), result
        assert result["indices"].shape[0] == 8
    # Refused once the signal arrived, with a status clients retry (not NOT_FOUND).
    assert isinstance(late, InferenceServerException) and late.status() == "StatusCode.UNAVAILABLE", late
    assert code == 0, server.log()[-3000:]
    assert re.search(r"splade-triton: drained in [0-9.]+ s", server.log())
    with capsys.disabled():
        print(f"\nSIGTERM with {len(results)} requests in flight: all served, exit 0 after {drain:.1f} s; "
              f"a new request got: {str(late)[:100]}")


# --- broken model files --------------------------------------------------------------


def test_missing_or_corrupt_model_files_fail_the_load_and_name_the_file(tmp_path):
    # Fault injection on an assembled copy (files are hard links: replace, never write through).
    repository = assemble_variant(tmp_path)
    onnx = repository / "splade_encoder" / "1" / "model.onnx"
    onnx.unlink()
    onnx.write_bytes(b"not an onnx graph" * 100)
    missing = repository / "splade_tokenizer" / "1" / "tokenizer.json"
    missing.unlink()
    truncated = repository / "splade_sparsify" / "1" / "tokenizer.json"
    text = truncated.read_text()
    truncated.unlink()
    truncated.write_text(text[:1000])
    server = Server(repository, tmp_path / "server.log")
    try:
        deadline = time.monotonic() + 120
        while True:
            assert time.monotonic() < deadline, server.log()[-3000:]
            assert server.process.poll() is None, server.log()[-3000:]
            try:
                states = {m["name"]: m for m in repository_index(server)}
                if all(m.get("state") not in ("LOADING", None) for n, m in states.items() if n not in ("splade", "splade_embedding", "splade_windows")):
                    break
            except OSError:
                pass
            time.sleep(0.25)
        for model, path in (("splade_encoder", onnx), ("splade_tokenizer", missing), ("splade_sparsify", truncated)):
            assert states[model]["state"] == "UNAVAILABLE"
            assert str(path) in states[model]["reason"]
            assert f"failed to load '{model}'" in server.log()
            assert str(path) in server.log()
        assert not server.is_ready()
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(f"http://{server.http_url}/v2/models/splade/ready", timeout=5)
    finally:
        assert server.stop() == 0


def test_a_draining_server_answers_retryable_statuses(own_server):
    """New requests during the drain: gRPC UNAVAILABLE, HTTP 503 or a refused connection; never NOT_FOUND."""
    server = own_server

    def call(i):
        return timed(lambda: triton.encode("grpc", triton.client("grpc", server), [f"{i} {PASSAGE}"] * 8,
                                           outputs=("indices",)))

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(call, i) for i in range(8)]
        time.sleep(1.0)
        server.send_signal(signal.SIGTERM)
        late = []
        deadline = time.monotonic() + 60
        while server.process.poll() is None and time.monotonic() < deadline:
            for protocol in ("grpc", "http"):
                try:
                    triton.encode(protocol, triton.client(protocol, server), [QUERY], outputs=("indices",))
                    late.append((protocol, "served"))
                except InferenceServerException as e:
                    late.append((protocol, e.status()))
                except Exception as e:  # noqa: BLE001 - a refused connection
                    late.append((protocol, type(e).__name__))
            time.sleep(0.05)
        results = [f.result(timeout=HANG + 30) for f in futures]
    assert not [r for r, _ in results if isinstance(r, InferenceServerException)]
    statuses = {status for _, status in late}
    assert statuses & {"StatusCode.UNAVAILABLE", "503"}, late
    assert statuses <= {"served", "StatusCode.UNAVAILABLE", "503", "ConnectionRefusedError", "HTTPConnectionClosed"}, late
    assert not [x for x in late if "NOT_FOUND" in x[1] or x[1] in ("404", "400")], late


def test_rolling_restart_loses_no_request(repository, tmp_path, capsys):
    """A client with retries keeps encoding while its server drains and a replacement starts on the same ports."""
    first = Server(repository, tmp_path / "first.log")
    first.wait_ready()
    ports = (first.http_port, first.grpc_port, first.metrics_port)
    stop = threading.Event()
    done, failed = [], []

    def keep_encoding(i, protocol):
        port = ports[0] if protocol == "http" else ports[1]
        with SpladeClient(f"{protocol}://127.0.0.1:{port}", retries=12, backoff=0.25, max_backoff=2.0) as c:
            n = 0
            while not stop.is_set():
                try:
                    vectors = c.encode([f"{i} {n} {QUERY}", PASSAGE])
                    assert len(vectors) == 2
                    done.append(1)
                except Exception as e:  # noqa: BLE001 - counted as lost
                    failed.append(repr(e))
                n += 1

    senders = [threading.Thread(target=keep_encoding, args=(i, "grpc" if i % 2 else "http")) for i in range(4)]
    second = None
    try:
        for t in senders:
            t.start()
        time.sleep(2)
        first.send_signal(signal.SIGTERM)
        assert first.process.wait(90) == 0, first.log()[-3000:]
        before = len(done)
        second = Server(repository, tmp_path / "second.log", ports=ports)
        second.wait_ready()
        time.sleep(3)
    finally:
        stop.set()
        for t in senders:
            t.join(120)
        first.stop()
        if second is not None:
            second.stop()
    assert not failed, failed[:3]
    assert len(done) > before > 0
    with capsys.disabled():
        print(f"\nrolling restart: {len(done)} requests, {len(failed)} lost ({before} before the replacement)")
