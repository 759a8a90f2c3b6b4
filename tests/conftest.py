"""Fixtures: a real tritonserver on free ports, clients, the reference model."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from splade_triton.artifacts import reference
from splade_triton.artifacts.repository import Pipeline, assemble, default_pipelines
from splade_triton.launcher.server import ADMIN_KEY_ENV, ServerOptions, launched_tritonserver, stub_processes

ROOT = Path(__file__).resolve().parents[1]
MODEL_DIR = ROOT / "models" / "splade-tiny"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """The launcher (``python -m splade_triton.launcher``) serving a repository on 127.0.0.1.

    ``process`` is the launcher; tritonserver runs as its child, beside the
    launcher's stub supervisor. ``admin_key`` opens the restricted APIs.
    """

    def __init__(self, repository: Path, log_path: Path, extra_args: tuple[str, ...] = (),
                 launcher_args: tuple[str, ...] = ()):
        self.admin_key = secrets.token_urlsafe(16)
        self.options = ServerOptions(
            model_repository=str(repository),
            http_port=free_port(),
            grpc_port=free_port(),
            metrics_port=free_port(),
            admin_key=self.admin_key,
            extra_args=extra_args,
        )
        self.log_path = log_path
        self._log = open(log_path, "wb")
        args = [
            sys.executable, "-m", "splade_triton.launcher.server",
            "--model-repository", str(repository),
            "--http-port", str(self.options.http_port),
            "--grpc-port", str(self.options.grpc_port),
            "--metrics-port", str(self.options.metrics_port),
            *launcher_args, "--", *extra_args,
        ]
        env = {**os.environ, ADMIN_KEY_ENV: self.admin_key}
        self.process = subprocess.Popen(args, cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT)

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.options.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.options.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.options.metrics_port}/metrics"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def is_ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"tritonserver exited with {self.process.returncode}:\n{self.log()[-4000:]}")
            if self.is_ready():
                return
            time.sleep(0.25)
        raise RuntimeError(f"tritonserver not ready after {timeout} s:\n{self.log()[-4000:]}")

    def tritonserver_pid(self) -> int:
        """The launcher's tritonserver child."""
        pid = launched_tritonserver(self.process.pid)
        if pid is None:
            raise RuntimeError("the launcher has no tritonserver child")
        return pid

    def stubs(self):
        """The live Python-backend stub processes (splade_triton.launcher.server.StubProcess)."""
        return stub_processes(self.tritonserver_pid())

    def send_signal(self, signum: int = signal.SIGTERM) -> None:
        self.process.send_signal(signum)

    def stop(self, timeout: float = 90.0) -> int:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode

    def metrics(self) -> str:
        with urllib.request.urlopen(self.metrics_url, timeout=5) as r:
            return r.read().decode()


@contextmanager
def running(repository: Path, log_path: Path, **kwargs):
    """A ready Server on ``repository``, stopped on exit."""
    srv = Server(repository, log_path, **kwargs)
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


def default_pipeline() -> Pipeline:
    """The `splade` pipeline as pipelines/splade.toml specifies it."""
    return next(p for p in default_pipelines() if p.name == "splade")


def assemble_variant(parent: Path, **steps: dict) -> Path:
    """The default repository with more settings per step, assembled under ``parent``.

    ``steps``: step -> {"parameters": {...}, "config": "<config.pbtxt text>"},
    as a pipeline spec sets them.
    """
    pipeline = default_pipeline()
    for step, settings in steps.items():
        pipeline = pipeline.with_step(step, settings.get("parameters"), settings.get("config"))
    return assemble(parent / "model_repository", [pipeline])


@pytest.fixture(scope="session")
def repository(tmp_path_factory) -> Path:
    """The default repository (pipelines/*.toml), assembled for this test session."""
    if not (default_pipeline().model / "model.onnx").is_file():
        pytest.fail("the default model is not exported: run script/setup")
    return assemble(tmp_path_factory.mktemp("repository") / "model_repository")


@pytest.fixture(scope="session")
def server(repository, tmp_path_factory):
    with running(repository, tmp_path_factory.mktemp("triton") / "server.log") as srv:
        yield srv


@pytest.fixture(scope="session")
def reference_model():
    return reference.load(str(MODEL_DIR))


@pytest.fixture(scope="session")
def vocab_size(reference_model):
    return reference_model[1].config.vocab_size


@pytest.fixture(scope="session")
def reference_encode(reference_model):
    """texts -> reference SPLADE vectors [n, vocab] (transformers, literal formula)."""
    tokenizer, mlm = reference_model
    cache: dict[str, np.ndarray] = {}

    def encode(texts):
        missing = [t for t in dict.fromkeys(texts) if t not in cache]
        if missing:
            for text, vec in zip(missing, reference.encode(tokenizer, mlm, missing)):
                cache[text] = vec
        return np.stack([cache[t] for t in texts])

    return encode
