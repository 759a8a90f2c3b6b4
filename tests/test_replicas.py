"""Many replicas: one bulk encode spread over two real tritonservers, with failover.

The replicas run as in the cluster (deploy/k8s: the launcher with
``--model-control-mode none``, where Triton's own shutdown refuses requests
with NOT_FOUND "unknown model" before it closes its ports); the rolling
restart also with the launcher's drain (explicit mode). The client
(``python -m client encode`` with two ``--url``) must finish with every text
encoded exactly once and the same vector as an undisturbed run, while one
replica is stopped and restarted (a rolling restart), in another run hung
(SIGSTOP: connections accepted, never answered), and in another killed with
SIGKILL. Per-replica inference counts come from each server's /metrics.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from client import core
from client.core import SpladeClient, parse_urls
from client.errors import ModelNotFoundError
from tests.conftest import ROOT, Server, free_port

TEXTS = 3000
BATCH = "16"  # texts per request: ~190 requests per run, enough to see the spread
IN_FLIGHT = "8"
CLUSTER_MODE = ("--model-control-mode", "none")  # as deploy/k8s runs it
# deploy/k8s ages gRPC connections out after 60 s (GOAWAY, so clients resolve the headless
# Service again); 2 s here, so that every encode below runs across several GOAWAYs.
CONNECTION_AGE = ("--grpc-max-connection-age=2000", "--grpc-max-connection-age-grace=60000")
CLIENT_MAX_BACKOFF_S = 4.0  # the client's default max_backoff
WORDS = ("river bank fox jumps over the lazy dog capital of france paris city north south tower "
         "bridge music art what is how do learned sparse retrieval index query passage").split()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    rnd = random.Random(15)
    path = tmp_path_factory.mktemp("replicas") / "corpus.jsonl"
    with open(path, "w") as f:
        for i in range(TEXTS):
            text = f"{i} " + " ".join(rnd.choice(WORDS) for _ in range(rnd.randint(4, 20)))
            f.write(json.dumps({"id": f"t{i}", "text": text}) + "\n")
    return path


@pytest.fixture(scope="module")
def replicas(repository, tmp_path_factory):
    """Two replicas of the service; a test may replace one (the list is updated in place)."""
    logs = tmp_path_factory.mktemp("replica-logs")
    servers = [Server(repository, logs / f"replica-{i}.log", launcher_args=CLUSTER_MODE, extra_args=CONNECTION_AGE)
               for i in range(2)]
    try:
        for s in servers:
            s.wait_ready()
        yield servers
    finally:
        for s in servers:
            s.stop()


def served(server: Server) -> int:
    """Requests the replica's `splade` ensemble answered (Triton's nv_inference_request_success)."""
    with urllib.request.urlopen(server.metrics_url, timeout=5) as r:
        text = r.read().decode()
    found = re.search(r'^nv_inference_request_success\{model="splade",version="1"\} (\S+)$', text, re.M)
    assert found, f"no nv_inference_request_success for model splade at {server.metrics_url}"
    return int(float(found.group(1)))


def encode(urls: list[str], corpus: Path, output: Path, *options: str) -> subprocess.Popen:
    """The bulk encode, as a user runs it: ``python -m client encode --url A --url B ...``
    (and ``options``); its output (retries with --verbose, then the summary) in ``output``.log."""
    args = [sys.executable, "-m", "client", "encode", *[a for u in urls for a in ("--url", u)],
            "--input", str(corpus), "--output", str(output), "--progress", "off",
            "--batch-size", BATCH, "--max-in-flight", IN_FLIGHT, "--verbose", *options]
    with open(output.with_suffix(".log"), "wb") as log:  # a file, not a pipe that could fill up
        process = subprocess.Popen(args, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    process.log_path = output.with_suffix(".log")
    return process


def finish(process: subprocess.Popen) -> str:
    """The encode's output, once it has exited 0."""
    process.wait(600)
    log = process.log_path.read_text()
    assert process.returncode == 0, f"the encode failed ({process.returncode}): {log[-2000:]}"
    return log


def failovers(log: str) -> str:
    """How many requests went to another server, and the distinct reasons (ports elided)."""
    reasons = [re.sub(r"\d+", "N", line.split(": ", 1)[-1])[:110]
               for line in log.splitlines() if line.endswith("trying another server")]
    return f"{len(reasons)} fail-overs {sorted(set(reasons))}"


def lines_in(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def wait_for_lines(path: Path, n: int, process: subprocess.Popen) -> None:
    while lines_in(path) < n:
        assert process.poll() is None, f"the encode ended before {n} vectors were written: {finish(process)}"
        time.sleep(0.05)


def vectors(path: Path) -> dict[str, tuple[list, list]]:
    """id -> (indices, values); fails if an id is written twice."""
    out: dict[str, tuple[list, list]] = {}
    for line in path.read_text().splitlines():
        record = json.loads(line)
        assert record["id"] not in out, f"text {record['id']} was written twice"
        out[record["id"]] = (record["indices"], record["values"])
    return out


def assert_same(got: dict, expected: dict) -> None:
    assert len(got) == len(expected) == TEXTS, (len(got), len(expected))
    for key, (indices, values) in expected.items():
        assert got[key][0] == indices, f"text {key}: other terms than the undisturbed run"
        np.testing.assert_allclose(got[key][1], values, atol=1e-4, err_msg=f"text {key}")


# --- the client's choice of server ------------------------------------------------------------


def test_parse_urls():
    assert [str(e) for e in parse_urls(["grpc://a:1,http://b", "c", "grpc://a:1", "dns:///svc.ns:8001"])] == [
        "grpc://a:1", "http://b:8000", "grpc://c:8001", "dns:///svc.ns:8001"]
    assert [str(e) for e in parse_urls("dns:///svc", "grpc")] == ["dns:///svc:8001"]
    # gRPC's address lists keep their commas: one endpoint, last in its string.
    assert [str(e) for e in parse_urls("http://a:1, ipv4:127.0.0.1:2,127.0.0.2")] == [
        "http://a:1", "ipv4:127.0.0.1:2,127.0.0.2:8001"]
    assert [str(e) for e in parse_urls(["ipv6:[::1]:3", "c:4"])] == ["ipv6:[::1]:3", "grpc://c:4"]
    for bad, protocol in ((" , ", None), ([], None), ("dns:///svc:1", "http"), ("a:1,ftp://b", None),
                          ("ipv4:", None), ("ipv4:127.0.0.1:1", "http"), ("ipv4:localhost:1", None),
                          ("ipv6:::1", None), ("ipv4:127.0.0.1:1,[::1]:2", None)):
        with pytest.raises(ValueError):
            parse_urls(bad, protocol)


@pytest.fixture
def sent(monkeypatch) -> list[str]:
    """The server of every request the client sends."""
    calls: list[str] = []
    original = core._Transport.infer

    async def infer(self, *args):
        calls.append(str(self.endpoint))
        return await original(self, *args)

    monkeypatch.setattr(core._Transport, "infer", infer)
    return calls


def test_a_dead_replica_is_failed_over_at_once(replicas, sent):
    dead = f"grpc://127.0.0.1:{free_port()}"
    live = f"grpc://{replicas[0].grpc_url}"
    # No retry (failover alone); one request at a time; a failed server left out for a minute.
    with SpladeClient([dead, live], retries=0, batch_size=1, max_in_flight=1, backoff=30, max_backoff=60) as client:
        vectors = client.encode(["what is the capital of france"] * 4, return_tokens=True)
    assert all(v.tokens[:2] == ("capital", "france") for v in vectors)
    # The dead one was tried once, then left out while the others went to the live one.
    assert sent.count(dead) == 1 and sent.count(live) == 4, sent


def test_not_found_on_every_replica_is_reported_after_trying_each_once(replicas, sent):
    urls = [f"http://{s.http_url}" for s in replicas]
    with SpladeClient(urls, model="nope", retries=3) as client, pytest.raises(ModelNotFoundError, match="'nope'"):
        client.encode(["a"])
    assert sorted(sent) == sorted(urls)


# --- bulk encodes through disruptions --------------------------------------------------------


@pytest.fixture(scope="module")
def undisturbed(replicas, corpus, tmp_path_factory) -> tuple[dict, list[int], str]:
    """The reference: the same encode with both replicas up (one comma-separated --url);
    its vectors, the requests each replica answered, and the encode's output."""
    output = tmp_path_factory.mktemp("undisturbed") / "vectors.jsonl"
    before = [served(s) for s in replicas]
    log = finish(encode([",".join(f"grpc://{s.grpc_url}" for s in replicas)], corpus, output))
    counts = [served(s) - b for s, b in zip(replicas, before)]
    return vectors(output), counts, log


def test_the_load_is_spread_over_replicas(undisturbed, capsys):
    result, counts, log = undisturbed
    summary = log.strip().splitlines()[-1]
    assert len(result) == TEXTS, summary
    # Connections aged out every 2 s cost no request: nothing was failed over or retried.
    assert "WARNING" not in log, log[-2000:]
    # Round-robin: each replica answers about half of the requests.
    assert min(counts) >= 0.3 * sum(counts), f"requests per replica: {counts}"
    with capsys.disabled():
        print(f"\nundisturbed, gRPC connections aged out every 2 s: requests per replica {counts}; {summary}")


def replace(replicas: list[Server], i: int, mode: str) -> Server:
    """A new replica ``i`` in ``mode`` on the same ports (the old one must have exited)."""
    old = replicas[i]
    old.stop()  # cleans up after it (leftover processes, /dev/shm regions)
    ports = (old.http_port, old.grpc_port, old.metrics_port)
    log = old.log_path.with_name(f"replica-{i}-{mode}-{time.monotonic_ns()}.log")
    replicas[i] = Server(old.repository, log, launcher_args=("--model-control-mode", mode),
                         extra_args=CONNECTION_AGE, ports=ports)
    return replicas[i]


# none: as in the cluster (Triton's own shutdown, after the preStop delay); explicit: the
# launcher's default, whose drain refuses new requests with UNAVAILABLE first.
@pytest.mark.parametrize("mode", ["none", "explicit"])
def test_rolling_restart_of_a_replica_loses_no_text(replicas, corpus, undisturbed, tmp_path, capsys, mode):
    if f"--model-control-mode {mode}" not in " ".join(replicas[0].launcher_args):
        replace(replicas, 0, mode).wait_ready()
    first, other = replicas
    output = tmp_path / "vectors.jsonl"
    before = [served(s) for s in replicas]
    process = encode([f"grpc://{first.grpc_url}", f"grpc://{other.grpc_url}"], corpus, output)
    wait_for_lines(output, TEXTS // 10, process)
    at_stop = served(first) - before[0]
    first.send_signal(signal.SIGTERM)  # what Kubernetes sends after the preStop delay
    # The encode goes on over the other replica while this one stops; then it is paused while
    # the replacement starts, so that work is left for the restarted replica whatever the speed.
    while first.process.poll() is None and lines_in(output) < TEXTS * 6 // 10:
        time.sleep(0.05)
    process.send_signal(signal.SIGSTOP)
    paused_at = time.monotonic()
    try:
        assert first.process.wait(120) == 0, first.log()[-3000:]
        if mode == "explicit":
            assert re.search(r"splade-triton: drained in [0-9.]+ s", first.log()), first.log()[-3000:]
        paused_with = lines_in(output)
        replacement = replace(replicas, 0, mode)
        replacement.wait_ready()
        # Past the longest a failed server is left out (the client's max_backoff): it is tried again.
        time.sleep(max(0.0, CLIENT_MAX_BACKOFF_S + 0.5 - (time.monotonic() - paused_at)))
    finally:
        process.send_signal(signal.SIGCONT)
    log = finish(process)
    counts = (at_stop, served(replacement), served(other) - before[1])
    assert_same(vectors(output), undisturbed[0])
    assert min(counts) > 0, f"requests: replica 0 before its stop, after its restart, replica 1: {counts}"
    with capsys.disabled():
        print(f"\nrolling restart, model control {mode}: stopped at {TEXTS // 10}/{TEXTS} texts, paused at "
              f"{paused_with}; requests: replica 0 {at_stop} before its stop + {counts[1]} after its restart, "
              f"replica 1 {counts[2]}; {failovers(log)}; {log.strip().splitlines()[-1]}")


def test_a_hung_replica_is_failed_over_and_left_out(replicas, corpus, undisturbed, tmp_path, capsys):
    # A stopped tritonserver (SIGSTOP) still accepts connections and never answers: only the
    # client's deadline finds it. 10 s: never reached by a healthy replica on this loaded machine.
    healthy, hung = replicas
    timeout_s = 10
    output = tmp_path / "vectors.jsonl"
    before = [served(s) for s in replicas]
    process = encode([f"grpc://{healthy.grpc_url}", f"grpc://{hung.grpc_url}"], corpus, output,
                     "--timeout", str(timeout_s))
    wait_for_lines(output, TEXTS // 4, process)
    pid = hung.tritonserver_pid()
    os.kill(pid, signal.SIGSTOP)
    stopped_at = lines_in(output)
    try:
        log = finish(process)
        after = served(healthy) - before[0]
    finally:
        os.kill(pid, signal.SIGCONT)  # so that it can answer, and be stopped, again
    assert_same(vectors(output), undisturbed[0])
    # Only the requests already waiting on it when it stopped could wait out their deadline (the
    # first one to do so gives up on the others); every later request went to the healthy one.
    # Before the fix: the first deadline ended the encode ("no answer ... within 10 s").
    deadlines = [line for line in log.splitlines() if f"within {timeout_s} s" in line]
    assert 1 <= len(deadlines) <= 3, f"{len(deadlines)} requests waited out the deadline: {failovers(log)}"
    with capsys.disabled():
        print(f"\nSIGSTOP: replica 1 stopped at {stopped_at}/{TEXTS} texts; {len(deadlines)} deadline(s) passed; "
              f"replica 0 answered {after} requests; {failovers(log)}; {log.strip().splitlines()[-1]}")


def test_a_hung_replica_is_probed_back_into_the_rotation(replicas, caplog):
    healthy, hung = replicas
    texts = ["what is the capital of france"] * 20
    caplog.set_level(logging.INFO, logger="client")
    with SpladeClient([f"grpc://{healthy.grpc_url}", f"grpc://{hung.grpc_url}"], timeout=5, batch_size=1,
                      max_in_flight=2) as client:
        client.encode(texts[:4])  # connected to both (a new connection to a stopped one is refused, not hung)
        pid = hung.tritonserver_pid()
        os.kill(pid, signal.SIGSTOP)
        try:
            assert all(v.top(1)[0][0] == "capital" for v in client.encode(texts, return_tokens=True))
            assert any("is left out until it answers a probe" in m for m in caplog.messages), caplog.messages
        finally:
            os.kill(pid, signal.SIGCONT)
        # Its probe is answered once it runs again (at the latest: the next probe, after a back-off).
        deadline = time.monotonic() + 120
        while not any("answered a probe" in m for m in caplog.messages):
            assert time.monotonic() < deadline, caplog.messages
            time.sleep(0.2)
        before = served(hung)
        client.encode(texts)
        assert served(hung) - before >= len(texts) // 4, "the replica was not taken back"


def test_a_replica_killed_with_sigkill_loses_no_text(replicas, corpus, undisturbed, tmp_path, capsys):
    survivor, victim = replicas
    output = tmp_path / "vectors.jsonl"
    before = [served(s) for s in replicas]
    process = encode([f"http://{survivor.http_url}", f"http://{victim.http_url}"], corpus, output)
    wait_for_lines(output, TEXTS // 4, process)
    at_kill = served(victim) - before[1]
    os.kill(victim.tritonserver_pid(), signal.SIGKILL)  # a crash: no drain, no goodbye
    killed_at = lines_in(output)
    log = finish(process)
    counts = (served(survivor) - before[0], at_kill)
    assert_same(vectors(output), undisturbed[0])
    assert counts[1] > 0 and counts[0] > 0, f"requests per replica: {counts}"
    with capsys.disabled():
        print(f"\nSIGKILL: replica 1 killed at {killed_at}/{TEXTS} texts; requests: replica 0 {counts[0]}, "
              f"replica 1 {counts[1]} before the kill; {failovers(log)}; "
              f"{log.strip().splitlines()[-1]}")


def test_grpc_spreads_over_the_addresses_of_a_dns_name(replicas):
    # gRPC's dns resolver and round_robin, as on a headless Service's name;
    # here one replica behind "localhost" (which may also resolve to ::1, not served).
    server = next(s for s in replicas if s.process.poll() is None)
    with SpladeClient(f"dns:///localhost:{server.grpc_port}") as client:
        vector = client.encode("what is the capital of france", top_k=2, return_tokens=True)
    assert vector.tokens == ("capital", "france")


class OnHost(Server):
    """A replica bound to another loopback address (the launcher's --host; all of 127.0.0.0/8
    is loopback on Linux), so that two replicas can share one port."""

    def __init__(self, host: str, repository: Path, log_path: Path, **kwargs):
        self.host = host
        super().__init__(repository, log_path, launcher_args=("--host", host), **kwargs)

    http_url = property(lambda self: f"{self.host}:{self.http_port}")
    grpc_url = property(lambda self: f"{self.host}:{self.grpc_port}")
    metrics_url = property(lambda self: f"http://{self.host}:{self.metrics_port}/metrics")
    ready_url = property(lambda self: f"http://{self.host}:{self.health_port}/v2/health/ready")


def test_grpc_spreads_over_the_addresses_of_one_target(replicas, tmp_path, capsys):
    # No name here resolves to two addresses (/etc/hosts is not ours to edit), so the closest:
    # gRPC's own list of addresses, one channel, through the same client path as a dns:/// name
    # (gRPC's resolver hands round_robin the addresses either way). Two replicas on one port.
    first = next(s for s in replicas if s.process.poll() is None)
    ports = (free_port(), first.grpc_port, free_port())
    second = OnHost("127.0.0.2", first.repository, tmp_path / "second.log", ports=ports)
    try:
        second.wait_ready()
        before = [served(s) for s in (first, second)]
        target = f"ipv4:127.0.0.1:{first.grpc_port},127.0.0.2:{second.grpc_port}"
        with SpladeClient(target, batch_size=1, max_in_flight=4) as client:
            assert len(client.endpoints) == 1, client.endpoints  # one channel, not two replicas of ours
            vectors = client.encode(["what is the capital of france"] * 60, top_k=2, return_tokens=True)
        counts = [served(s) - b for s, b in zip((first, second), before)]
    finally:
        second.stop()
    assert all(v.tokens == ("capital", "france") for v in vectors)
    assert sum(counts) == 60 and min(counts) >= 15, f"requests per address: {counts}"
    with capsys.disabled():
        print(f"\n{target}: requests per address {counts}")
