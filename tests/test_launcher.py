"""script/serve: localhost by default, configurable ports, clean stop on Ctrl-C."""

from __future__ import annotations

import signal
import subprocess
import time
import urllib.request

from tests.conftest import ROOT, free_port


def wait_ready(port: int, process: subprocess.Popen, timeout: float = 120) -> None:
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
    http, grpc, metrics = free_port(), free_port(), free_port()
    process = subprocess.Popen(
        [str(ROOT / "script" / "serve"), "--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics)],
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
    assert "successfully unloaded 'encoder'" in output
