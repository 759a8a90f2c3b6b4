"""Model-control mode none (the cluster's): a Python-backend stub that dies cannot be reloaded,
so the launcher stops tritonserver and exits non-zero, naming the model, for a restart.

A real launcher on the default repository; the encoder's stub is killed with SIGKILL.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from tritonclient.utils import InferenceServerException

from splade_triton.launcher.harness import alive
from tests import triton
from tests.conftest import running

# Triton's own shutdown with a dead stub can wait out its whole exit timeout (30 s, the
# cluster's) before the launcher's margin (10 s): a bound for "exited", not a timing claim.
EXIT_BOUND_S = 120


def test_a_dead_stub_in_mode_none_ends_the_launcher_non_zero_naming_the_model(repository, tmp_path, capsys):
    with running(repository, tmp_path / "server.log",
                 launcher_args=("--model-control-mode", "none", "--exit-timeout", "30")) as server:
        (victim,) = [s for s in server.stubs() if s.model == "splade_encoder"]
        server._track()  # every process and /dev/shm region, to check none outlives the launcher
        pids, regions = set(server.seen_pids), set(server.seen_regions)
        assert len(pids) >= 5 and regions, (pids, regions)
        os.kill(victim.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        # A request sent now fails (INTERNAL, the dead stub) or finds the server stopping:
        # either way it is answered, not hung.
        try:
            triton.encode("grpc", triton.client("grpc", server), ["what is the capital of france"])
        except InferenceServerException:
            pass
        # While Triton stops, the pod reads not ready (the readiness probe takes it out of the
        # Service's endpoints) before the launcher exits.
        unready_at = None
        while server.process.poll() is None and time.monotonic() - killed_at < EXIT_BOUND_S:
            if unready_at is None and not server.is_ready():
                unready_at = time.monotonic() - killed_at
            time.sleep(0.2)
        try:
            code = server.process.wait(1)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the launcher still runs {EXIT_BOUND_S} s after the stub died:\n{server.log()[-3000:]}")
        seconds = time.monotonic() - killed_at
        log = server.log()
        left = [p for p in pids if alive(p)]
        shm = [r for r in regions if (Path("/dev/shm") / r).exists()]
    assert code != 0, log[-3000:]
    lines = [line for line in log.splitlines() if line.startswith(f"splade-triton: exiting {code}:")]
    assert len(lines) == 1, log[-3000:]
    assert "1 of 1 Python-backend stub(s) of model 'splade_encoder' died" in lines[0]
    assert "model-control mode none cannot reload it" in lines[0]
    assert "reloading model" not in log  # no reload was tried: mode none refuses it
    assert unready_at is not None, "the server read ready until the launcher exited"
    # What the launcher itself left, checked before the harness cleans up after it.
    assert not left, f"processes left behind: {left}"
    assert not shm, f"/dev/shm regions left behind: {shm}"
    with capsys.disabled():
        print(f"\nencoder stub killed in mode none: not ready after {unready_at:.1f} s, launcher exited {code} "
              f"after {seconds:.1f} s: {lines[0]}")
