"""Start the launcher as a subprocess on free ports, wait until it serves, stop it, leak nothing.

The one way tests and benchmarks run a server:

    with Launched(repository, log_path) as server:
        ... server.grpc_url, server.http_url ...
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from splade_triton.launcher.admin import ADMIN_KEY_ENV
from splade_triton.launcher.stubs import launched_tritonserver, mapped_regions, remove_regions, stub_processes

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A TCP port of 127.0.0.1 free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class NotReady(RuntimeError):
    """The launcher exited, or did not serve within the timeout (it has been stopped)."""


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


class Launched:
    """``python -m splade_triton.launcher`` serving ``repository`` on free 127.0.0.1 ports.

    ``process`` is the launcher; tritonserver runs as its child. ``admin_key``
    opens the restricted APIs. Entering waits until ready (``ready_timeout_s``);
    leaving stops it (SIGTERM: drain, then exit). Whatever happens, every
    process seen (launcher, tritonserver, stubs) is gone afterwards and their
    /dev/shm regions removed.
    """

    def __init__(self, repository: Path | str, log_path: Path, extra_args: tuple[str, ...] = (),
                 launcher_args: tuple[str, ...] = (), ready_timeout_s: float = 180.0,
                 ports: tuple[int, int, int] | None = None, cwd: Path | None = None):
        # A directory, or a URL that tritonserver reads itself (s3://...): Path would mangle it.
        self.repository = repository if "://" in str(repository) else Path(repository)
        self.log_path = Path(log_path)
        self.extra_args = tuple(extra_args)
        self.launcher_args = tuple(launcher_args)
        self.ready_timeout_s = ready_timeout_s
        self.admin_key = secrets.token_urlsafe(16)
        self.http_port, self.grpc_port, self.metrics_port = ports or (free_port(), free_port(), free_port())
        self.health_port = free_port()  # the launcher's readiness endpoint (what a readinessProbe reads)
        # Where the launcher (and so tritonserver and its stubs) runs; the checkout unless given.
        self.cwd = Path(cwd) if cwd is not None else ROOT
        self.process: subprocess.Popen | None = None
        self.seen_pids: set[int] = set()
        self.seen_regions: set[str] = set()
        self._log = None

    # --- addresses -------------------------------------------------------------------

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    @property
    def ready_url(self) -> str:
        return f"http://127.0.0.1:{self.health_port}/v2/health/ready"

    def url(self, protocol: str) -> str:
        return self.http_url if protocol == "http" else self.grpc_url

    # --- life cycle ------------------------------------------------------------------

    def start(self) -> "Launched":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")
        args = [
            sys.executable, "-m", "splade_triton.launcher",
            "--model-repository", str(self.repository),
            "--http-port", str(self.http_port), "--grpc-port", str(self.grpc_port),
            "--metrics-port", str(self.metrics_port), "--health-port", str(self.health_port),
            *self.launcher_args, "--", *self.extra_args,
        ]
        env = {**os.environ, ADMIN_KEY_ENV: self.admin_key}
        if self.cwd != ROOT:
            # The launcher from the checkout, without the working directory on its sys.path.
            env.update(PYTHONPATH=str(ROOT), PYTHONSAFEPATH="1")
        self.process = subprocess.Popen(args, cwd=self.cwd, env=env, stdin=subprocess.DEVNULL,
                                        stdout=self._log, stderr=subprocess.STDOUT)
        self.seen_pids.add(self.process.pid)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def is_ready(self) -> bool:
        """The launcher's readiness (tritonserver ready, and no stop asked for)."""
        try:
            with urllib.request.urlopen(self.ready_url, timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def _track(self) -> None:
        """Remember tritonserver, its stubs and their shm regions, to clean up after them."""
        pid = self.tritonserver_pid(required=False)
        if pid is None:
            return
        self.seen_pids.add(pid)
        self.seen_regions |= mapped_regions(pid)
        for stub in stub_processes(pid):
            self.seen_pids.add(stub.pid)
            self.seen_regions.add(stub.shm_region)

    def wait_ready(self, timeout_s: float | None = None) -> None:
        """Until /v2/health/ready; on exit, a model's load failure or timeout, stop everything and raise NotReady."""
        deadline = time.monotonic() + (self.ready_timeout_s if timeout_s is None else timeout_s)
        while True:
            self._track()
            if self.process.poll() is not None:
                self.stop()
                raise NotReady(f"the launcher exited with {self.process.returncode}:\n{self.log()[-4000:]}")
            if self.is_ready():
                self._track()
                return
            # A model that failed to load never becomes ready: say so now, not at the deadline.
            failure = next((line for line in self.log().splitlines() if "failed to load '" in line), None)
            if failure:
                self.stop(timeout_s=10)
                raise NotReady(f"a model failed to load: {failure.strip()}\n{self.log()[-4000:]}")
            if time.monotonic() >= deadline:
                self.stop(timeout_s=10)
                raise NotReady(f"not ready after {self.ready_timeout_s} s:\n{self.log()[-4000:]}")
            time.sleep(0.25)

    def tritonserver_pid(self, required: bool = True) -> int | None:
        pid = launched_tritonserver(self.process.pid) if self.process is not None else None
        if pid is None and required:
            raise RuntimeError("the launcher has no tritonserver child")
        return pid

    def stubs(self):
        """The live Python-backend stub processes (splade_triton.launcher.stubs.StubProcess)."""
        return stub_processes(self.tritonserver_pid())

    def send_signal(self, signum: int = signal.SIGTERM) -> None:
        self.process.send_signal(signum)

    def stop(self, timeout_s: float = 90.0) -> int | None:
        """SIGTERM the launcher (it drains); kill whatever is left after ``timeout_s``. Its exit status."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self._track()
            self.process.terminate()
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        # Anything the launcher left (it was killed, or died first) goes too.
        leftovers = [p for p in self.seen_pids if alive(p)]
        for pid in leftovers:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 10
        while any(alive(p) for p in leftovers) and time.monotonic() < deadline:
            time.sleep(0.05)
        remove_regions(self.seen_regions)
        if self._log is not None:
            self._log.close()
            self._log = None
        return self.process.returncode

    def __enter__(self) -> "Launched":
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop(timeout_s=10)
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
