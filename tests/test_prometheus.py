"""The autoscaling metric on a real Prometheus: Debian's prometheus scrapes two real
tritonservers (the launcher) and evaluates deploy/k8s/monitoring/prometheus-rule.yaml.

Under load the per-pod encoder queue time per request rises past the HPA's target on both
replicas; once idle it falls back to 0. promtool's rule unit tests check a pod with several
encoders (taken at its busiest, not averaged). Prometheus comes from script/install-prometheus
(script/setup runs it).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from client.core import SpladeClient
from tests.conftest import free_port, running
from tests.test_deploy import K8S, adapter_metric, quantity, recording_rule

PODS = ("replica-0", "replica-1")
NAMESPACE = "splade"
PASSAGE = " ".join(["the quick brown fox jumps over the lazy dog near the river bank"] * 8)
# The HPA's target (seconds of queue per request): 64 requests in flight per replica queue for
# far longer (1.3 s on one server here, docs/deploy.md), so both must pass it. Idle reads exactly 0.
RISEN = quantity(yaml.safe_load((K8S / "base" / "hpa.yaml").read_text())
                 ["spec"]["metrics"][0]["pods"]["target"]["averageValue"])
WAIT_S = 180  # a hang guard only


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: run script/install-prometheus as root (Debian's prometheus "
                    f"package; script/setup runs it)")
    return path


@pytest.fixture(scope="module")
def rules_file(tmp_path_factory) -> Path:
    """The PrometheusRule's spec as a plain rules file, checked by promtool."""
    rule = yaml.safe_load((K8S / "monitoring" / "prometheus-rule.yaml").read_text())
    path = tmp_path_factory.mktemp("rules") / "rules.yaml"
    path.write_text(yaml.safe_dump(rule["spec"]))
    done = subprocess.run([tool("promtool"), "check", "rules", str(path)], capture_output=True, text=True)
    assert done.returncode == 0, f"promtool check rules: {done.stdout} {done.stderr}"
    return path


def test_a_pod_is_judged_by_its_busiest_encoder(rules_file, tmp_path):
    """promtool's rule unit test: one pod with a busy and an idle encoder (two pipelines) and a
    busier non-encoder step; another pod idle. The recorded value is the busy encoder's own."""
    record = recording_rule()["record"]
    pod = 'namespace="splade",pod="{pod}",model="{model}",version="1"'
    series = []
    # Per second: 100 ms of queue over 2 requests at splade_encoder (0.05 s each); bge_m3_encoder
    # idle; the tokenizer queues longer but is not an encoder.
    for name, model, queue_us, requests in (("p0", "splade_encoder", 100000, 2), ("p0", "bge_m3_encoder", 0, 0),
                                            ("p0", "splade_tokenizer", 900000, 2), ("p1", "splade_encoder", 0, 0)):
        labels = pod.format(pod=name, model=model)
        series += [{"series": f"nv_inference_queue_duration_us{{{labels}}}", "values": f"0+{queue_us}x120"},
                   {"series": f"nv_inference_request_success{{{labels}}}", "values": f"0+{requests}x120"}]
    tests = {"rule_files": [str(rules_file)], "evaluation_interval": "1s",
             "tests": [{"interval": "1s", "input_series": series, "alert_rule_test": [],
                        "promql_expr_test": [{"expr": record, "eval_time": "60s", "exp_samples": [
                            {"labels": f'{record}{{namespace="splade",pod="p0"}}', "value": 0.05},
                            {"labels": f'{record}{{namespace="splade",pod="p1"}}', "value": 0}]}]}]}
    path = tmp_path / "rule-tests.yaml"
    path.write_text(yaml.safe_dump(tests))
    done = subprocess.run([tool("promtool"), "test", "rules", str(path)], capture_output=True, text=True)
    assert done.returncode == 0, f"promtool test rules: {done.stdout} {done.stderr}"


class Prometheus:
    def __init__(self, base: str):
        self.base = base

    def query(self, expr: str) -> dict[str, float]:
        """Instant query: pod label -> value."""
        url = f"{self.base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(url, timeout=10) as r:
            answer = json.loads(r.read())
        assert answer["status"] == "success", answer
        return {s["metric"].get("pod", ""): float(s["value"][1]) for s in answer["data"]["result"]}


@pytest.fixture(scope="module")
def replicas(repository, tmp_path_factory):
    logs = tmp_path_factory.mktemp("prometheus-replicas")
    with running(repository, logs / "replica-0.log") as first, running(repository, logs / "replica-1.log") as second:
        yield first, second


@pytest.fixture(scope="module")
def prometheus(replicas, rules_file, tmp_path_factory):
    """Prometheus on a free port, scraping both replicas every second as pods of one namespace."""
    directory = tmp_path_factory.mktemp("prometheus")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules_file)],
        "scrape_configs": [{
            "job_name": "triton",
            # What a PodMonitor adds in the cluster: the namespace and pod labels.
            "static_configs": [{"targets": [f"127.0.0.1:{s.metrics_port}"], "labels": {"namespace": NAMESPACE, "pod": pod}}
                               for s, pod in zip(replicas, PODS)],
        }],
    }
    (directory / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = open(directory / "prometheus.log", "wb")
    process = subprocess.Popen(
        [tool("prometheus"), f"--config.file={directory / 'prometheus.yml'}",
         f"--storage.tsdb.path={directory / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        api = Prometheus(f"http://127.0.0.1:{port}")
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, (directory / "prometheus.log").read_text()[-2000:]
            try:
                if api.query("up") == {pod: 1.0 for pod in PODS}:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "Prometheus did not scrape both replicas within 60 s"
            time.sleep(0.5)
        yield api
    finally:
        process.terminate()
        process.wait(30)
        log.close()


def wait_for(what: str, condition, prometheus: Prometheus, expr: str) -> dict[str, float]:
    deadline = time.monotonic() + WAIT_S
    values: dict[str, float] = {}
    while time.monotonic() < deadline:
        values = prometheus.query(expr)
        if set(values) == set(PODS) and condition(values):
            return values
        time.sleep(1)
    raise AssertionError(f"{what}: not within {WAIT_S} s; last values {values}")


def test_the_queue_time_rises_under_load_and_falls_when_idle(replicas, prometheus, capsys):
    record = recording_rule()["record"]
    window_s = int(re.search(r"\[(\d+)s\]", recording_rule()["expr"]).group(1))  # the rule's rate() window
    series, _ = adapter_metric()
    idle = wait_for("idle replicas read 0", lambda v: all(x == 0 for x in v.values()), prometheus, record)

    stop = threading.Event()
    sent = []

    def load():
        # Both replicas through one client, 128 requests of 4 passages in flight (64 per replica,
        # half the encoder's queue limit): more than a batch (max_batch_tokens) waits at each encoder.
        urls = ",".join(f"grpc://{s.grpc_url}" for s in replicas)
        with SpladeClient(urls, batch_size=4, max_in_flight=128) as client:
            while not stop.is_set():
                sent.append(len(client.encode([f"{len(sent)} {PASSAGE}"] * 512)))

    loader = threading.Thread(target=load)
    loader.start()
    started = time.monotonic()
    try:
        wait_for(f"the queue time per request passes the HPA's target ({RISEN} s) on both replicas under load",
                 lambda v: all(x > RISEN for x in v.values()), prometheus, record)
        # For the record, a reading once the rule's whole window is under load.
        time.sleep(max(0.0, started + window_s + 3 - time.monotonic()))
        loaded = prometheus.query(record)
        # What prometheus-adapter asks Prometheus for the HPA (its metricsQuery, filled in).
        adapter = prometheus.query(f'max({series}{{namespace="{NAMESPACE}",pod=~"{"|".join(PODS)}"}}) by (pod)')
    finally:
        stop.set()
        loader.join(120)
    stopped = time.monotonic()
    assert set(adapter) == set(PODS) and all(x > 0 for x in adapter.values()), adapter
    after = wait_for("the queue time falls back to 0 once idle", lambda v: all(x == 0 for x in v.values()),
                     prometheus, record)
    with capsys.disabled():
        print(f"\n{record}: idle {idle}; under load {({k: round(v, 3) for k, v in loaded.items()})} "
              f"({sum(sent)} passages); 0 again {time.monotonic() - stopped:.0f} s after the load; {after}; "
              f"load average {os.getloadavg()[0]:.2f}")
