"""The launcher: script/serve, the harness, stub discovery, the stub install, the readiness check."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from splade_triton.launcher import tritonserver
from splade_triton.launcher.harness import Launched, NotReady, alive, free_port
from splade_triton.launcher.stubs import StubProcess, parse_stub_argv
from splade_triton.launcher.supervisor import Supervisor, dead_models
from tests.conftest import ROOT, assemble_variant, running

STUB = "/site/pytriton/tritonserver/backends/python/triton_python_backend_stub"


def stub_argv(model: str, instance: str, region: str = "triton_python_backend_shm_region_ab-1") -> list[str]:
    # As this Python backend starts a stub (2.51).
    return [STUB, f"/repo/{model}/1/model.py", region, "16777216", "16777216", "4242",
            "/site/pytriton/tritonserver/backends/python", "336", instance, "DEFAULT"]


def test_stubs_are_found_by_content_not_position():
    assert parse_stub_argv(7, stub_argv("splade_encoder", "splade_encoder_0_0")) == StubProcess(
        7, "splade_encoder", "splade_encoder_0_0", "triton_python_backend_shm_region_ab-1")
    moved = stub_argv("splade_encoder", "splade_encoder_0_0")
    moved = [moved[0], moved[8], "extra", *moved[1:8], *moved[9:]]  # another release's order
    assert parse_stub_argv(7, moved).instance == "splade_encoder_0_0"
    assert parse_stub_argv(7, ["/usr/bin/python3", "x.py"]) is None


def test_supervisor_never_reloads_models_whose_stubs_it_never_saw():
    class FakeAdmin:
        def __init__(self):
            self.calls = []

        def states(self):
            return {"splade_encoder": "READY", "splade": "READY"}

        def stub_count(self, model):
            return 1 if model == "splade_encoder" else 0

        def unload(self, model):
            self.calls.append(("unload", model))

        def load(self, model, config=None):
            self.calls.append(("load", model))

    # Stubs that cannot be recognised (e.g. a changed command line): nothing is dead.
    admin = FakeAdmin()
    supervisor = Supervisor(1, admin, processes=lambda pid: [])
    state = (None, frozenset())
    for _ in range(5):
        state = supervisor.check(*state)
    assert admin.calls == []
    # Seen alive, then gone: reloaded once.
    alive = [StubProcess(10, "splade_encoder", "splade_encoder_0_0", "r")]
    current = {"stubs": alive}
    supervisor = Supervisor(1, admin, processes=lambda pid: current["stubs"])
    state = supervisor.check(None, frozenset())
    current["stubs"] = []
    for _ in range(5):
        state = supervisor.check(*state)
    assert admin.calls == [("unload", "splade_encoder"), ("load", "splade_encoder")]
    assert dead_models({"m": 2}, [StubProcess(1, "m", "m_0_0", "r")], {"m"}) == ["m"]
    assert dead_models({"m": 2}, [StubProcess(1, "m", "m_0_0", "r")], set()) == []


def test_supervisor_stop_is_bounded():
    supervisor = Supervisor(1, None)
    supervisor._busy.acquire()  # a reload that never ends
    start = time.monotonic()
    assert supervisor.stop(timeout_s=0.3) is False
    assert time.monotonic() - start < 2


def test_stub_install_is_atomic_and_skips_same_content(tmp_path):
    source = tmp_path / "source"
    source.write_bytes(os.urandom(1 << 20))
    target = tmp_path / "backends" / "triton_python_backend_stub"
    target.parent.mkdir()
    target.write_bytes(b"x" * (1 << 20))  # same size, other content: the old check kept it
    with ThreadPoolExecutor(8) as pool:
        written = list(pool.map(lambda _: tritonserver.install_stub(source, target), range(16)))
    assert target.read_bytes() == source.read_bytes()
    assert sum(written) == 1
    assert sorted(p.name for p in target.parent.iterdir()) == [".triton_python_backend_stub.lock", target.name]
    inode = target.stat().st_ino
    assert tritonserver.install_stub(source, target) is False and target.stat().st_ino == inode


def test_two_launches_at_once_both_serve(repository, tmp_path):
    servers = [Launched(repository, tmp_path / f"s{i}.log") for i in range(2)]
    for s in servers:
        s.start()
    try:
        for s in servers:
            s.wait_ready()
        for s in servers:
            assert "text file busy" not in s.log().lower()
    finally:
        for s in servers:
            assert s.stop() == 0


def test_a_readiness_timeout_leaves_no_process_behind(repository, tmp_path):
    server = Launched(repository, tmp_path / "server.log", ready_timeout_s=2.5).start()
    # Wait until tritonserver and some stubs exist, so there is something to leak.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        server._track()
        if len(server.seen_pids) >= 3:
            break
        time.sleep(0.05)
    with pytest.raises(NotReady):
        server.wait_ready(timeout_s=0)
    assert len(server.seen_pids) >= 3
    left = [p for p in server.seen_pids if alive(p)]
    assert not left, f"processes left behind: {left}"
    assert not [r for r in server.seen_regions if (Path("/dev/shm") / r).exists()]
    for port in (server.http_port, server.grpc_port):
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))  # free again


def test_check_runs_a_real_inference(server):
    ok = subprocess.run([sys.executable, "-m", "splade_triton.launcher", "check", "--url", server.http_url],
                        cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    nothing = subprocess.run([sys.executable, "-m", "splade_triton.launcher", "check", "--url",
                              f"127.0.0.1:{free_port()}", "--timeout", "2"],
                             cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert nothing.returncode == 1 and "not ready" in nothing.stderr


def test_check_fails_when_readiness_says_200_but_inference_fails(repository, tmp_path):
    # A stopped (SIGSTOP) encoder stub: alive to the supervisor (not reloaded) and to
    # /v2/health/ready (200), but no request through it is answered: Triton's stub health
    # check fails them ("Stub process ... is not healthy"), or they wait. The check must not pass.
    with running(repository, tmp_path / "server.log") as server:
        (encoder,) = [s for s in server.stubs() if s.model == "splade_encoder"]
        os.kill(encoder.pid, signal.SIGSTOP)
        try:
            with urllib.request.urlopen(f"http://{server.http_url}/v2/health/ready", timeout=10) as r:
                assert r.status == 200
            done = subprocess.run([sys.executable, "-m", "splade_triton.launcher", "check", "--url", server.http_url,
                                   "--timeout", "3"], cwd=ROOT, capture_output=True, text=True, timeout=120)
        finally:
            os.kill(encoder.pid, signal.SIGCONT)
    assert done.returncode == 1, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    # One line per ensemble (each runs the encoder), naming it and saying why.
    assert "splade" in {re.match(r"not ready: model '(\w+)': ", line).group(1) for line in lines}, done.stderr
    for line in lines:
        assert re.search(r"': (.*timed out|HTTP 500 .*Stub process 'splade_encoder_0_0' is not healthy)",
                         line), line


def test_bad_health_port_or_grace_period_is_refused_in_one_line(repository):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "splade_triton.launcher", "--model-repository", str(repository),
                               "--http-port", str(free_port()), "--grpc-port", str(free_port()),
                               "--metrics-port", str(free_port()), "--health-port", str(port)],
                              cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.splitlines() == [f"--health-port {port}: Address already in use"], done.stderr
    for bad, message in ((["--health-port", "70000"], "--health-port must be a port number (0 for none), got 70000"),
                         (["--grace-period", "-1"], "--grace-period must be 0 or more seconds, got -1")):
        done = subprocess.run([sys.executable, "-m", "splade_triton.launcher", *bad], cwd=ROOT,
                              capture_output=True, text=True, timeout=60)
        assert (done.returncode, done.stderr.splitlines()) == (1, [message])


def wait_ready(port: int, process: subprocess.Popen, timeout: float = 120) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stdout.read()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.25)
    raise AssertionError("script/serve did not become ready")


def test_serve_binds_localhost_and_stops_on_ctrl_c():
    http, grpc, metrics, health = free_port(), free_port(), free_port(), free_port()
    process = subprocess.Popen(
        [str(ROOT / "script" / "serve"), "--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics),
         "--health-port", str(health)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    try:
        wait_ready(http, process)
        process.send_signal(signal.SIGINT)  # what Ctrl-C delivers
        output, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, output[-3000:]
    assert f"Started GRPCInferenceService at 127.0.0.1:{grpc}" in output
    assert f"Started HTTPService at 127.0.0.1:{http}" in output
    assert "splade-triton: drained in" in output


def test_a_stock_tritonserver_can_be_chosen(tmp_path, monkeypatch):
    # NVIDIA's image layout: <root>/bin/tritonserver beside <root>/backends.
    binary = tmp_path / "tritonserver" / "bin" / "tritonserver"
    binary.parent.mkdir(parents=True)
    binary.write_text("")
    monkeypatch.setenv(tritonserver.TRITONSERVER_ENV, str(binary))
    args = tritonserver.command(tritonserver.ServerOptions("/repo", admin_key="k"))
    assert args[0] == str(binary)
    assert f"--backend-directory={tmp_path / 'tritonserver' / 'backends'}" in args


def test_the_gpu_image_starts_the_launcher():
    entrypoint = (ROOT / "docker" / "entrypoint.sh").read_text()
    assert "exec python3 -m splade_triton.launcher" in entrypoint
    assert "exec tritonserver" not in entrypoint
    compose = (ROOT / "docker" / "compose.yaml").read_text()
    assert '"splade_triton.launcher", "check"' in compose


def test_a_model_that_fails_to_load_ends_the_wait_at_once_naming_it(tmp_path):
    repository = assemble_variant(tmp_path)
    onnx = repository / "splade_encoder" / "1" / "model.onnx"
    onnx.unlink()  # a hard link: replaced, never written through
    onnx.write_bytes(b"not an onnx graph")
    server = Launched(repository, tmp_path / "server.log", ready_timeout_s=600).start()
    started = time.monotonic()
    with pytest.raises(NotReady, match="a model failed to load: .*failed to load 'splade_encoder'"):
        server.wait_ready()
    assert time.monotonic() - started < 300  # the load's own time, not the 600 s deadline
    assert not [p for p in server.seen_pids if alive(p)]
