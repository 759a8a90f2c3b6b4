"""Fixtures: a real tritonserver on free ports, clients, the reference model."""

from __future__ import annotations

import urllib.request
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from splade_triton.artifacts import reference
from splade_triton.artifacts.repository import Pipeline, assemble, default_pipelines
from splade_triton.launcher.harness import Launched, free_port  # noqa: F401 (free_port: for the tests)

ROOT = Path(__file__).resolve().parents[1]
MODEL_DIR = ROOT / "models" / "splade-tiny"


class Server(Launched):
    """The launcher (``python -m splade_triton.launcher``) serving a repository on 127.0.0.1,
    started at once (``wait_ready()`` to wait); see splade_triton.launcher.harness."""

    def __init__(self, repository: Path, log_path: Path, extra_args: tuple[str, ...] = (),
                 launcher_args: tuple[str, ...] = (), **kwargs):
        super().__init__(repository, log_path, extra_args=extra_args, launcher_args=launcher_args, **kwargs)
        self.start()

    def metrics(self) -> str:
        with urllib.request.urlopen(self.metrics_url, timeout=5) as r:
            return r.read().decode()


@contextmanager
def running(repository: Path, log_path: Path, **kwargs):
    """A ready Server on ``repository``, stopped on exit (nothing left behind)."""
    srv = Server(repository, log_path, **kwargs)
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


def load_failure(repository: Path, log: Path, message: str, timeout_s: float = 60) -> str:
    """Serve ``repository`` until its log says ``message`` (a model failing to load), then stop; the log."""
    import time

    server = Server(repository, log)
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not (log.is_file() and message in log.read_text(errors="replace")):
            time.sleep(0.2)
    finally:
        server.stop()
    return log.read_text(errors="replace")


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
    """The default `splade` pipeline, assembled for this test session (a user's
    own exports named in pipelines/ do not change what the tests serve)."""
    if not (default_pipeline().model / "model.onnx").is_file():
        pytest.fail("the default model is not exported: run script/setup")
    return assemble(tmp_path_factory.mktemp("repository") / "model_repository", [default_pipeline()])


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


# --- BGE-M3 (tests/test_bge_m3.py) -----------------------------------------------------------

BGE_M3_TINY = ROOT / "build" / "models" / "bge-m3-tiny"  # the fixture's export (script/setup)
BGE_M3_TINY_SRC = ROOT / "build" / "models" / "bge-m3-tiny-src"  # the fixture in the published layout
BGE_M3_QUERY_MAX_LENGTH = 32  # shorter than the documents' (the model's 512), so the two differ


def bge_m3_pipeline() -> Pipeline:
    """A `bge_m3` pipeline on the tiny fixture's export: queries up to 32 tokens,
    documents up to the model's 512 (the template's 8192, lowered by the assembly)."""
    return Pipeline("bge_m3", "bge_m3", BGE_M3_TINY).with_step(
        "tokenizer", parameters={"query_max_length": BGE_M3_QUERY_MAX_LENGTH})


@pytest.fixture(scope="session")
def bge_m3_repository(tmp_path_factory) -> Path:
    """The `bge_m3` pipeline alone (`bge_m3`, `bge_m3_colbert` and its steps), on the tiny fixture."""
    if not (BGE_M3_TINY / "model.onnx").is_file():
        pytest.fail("the BGE-M3 fixture is not exported: run script/setup")
    return assemble(tmp_path_factory.mktemp("bge_m3_repository") / "model_repository", [bge_m3_pipeline()])


@pytest.fixture(scope="session")
def bge_m3_server(bge_m3_repository, tmp_path_factory):
    with running(bge_m3_repository, tmp_path_factory.mktemp("bge_m3_triton") / "server.log") as srv:
        yield srv


@pytest.fixture(scope="session")
def flag_m3():
    """FlagEmbedding's own BGEM3FlagModel on the fixture's source directory (the reference)."""
    from FlagEmbedding import BGEM3FlagModel

    return BGEM3FlagModel(str(BGE_M3_TINY_SRC), use_fp16=False, devices="cpu")


# --- query/document models (tests/test_sides.py, tests/test_query_side.py) ----------------------

MODELS = ROOT / "build" / "models"
# Served name -> the tiny asymmetric fixture's export (script/setup; splade_triton/artifacts/asymmetric.py).
SIDES_PIPELINES = {"router": "splade-router-tiny", "opensearch": "splade-opensearch-tiny", "pair": "splade-pair-tiny"}


@pytest.fixture(scope="session")
def sides_server(tmp_path_factory):
    """The three asymmetric fixtures served side by side in one tritonserver."""
    missing = [name for name in SIDES_PIPELINES.values() if not (MODELS / name / "export_info.json").is_file()]
    if missing:
        pytest.fail(f"the asymmetric fixtures are not exported ({', '.join(missing)}): run script/setup")
    pipelines = [Pipeline(name, "splade", MODELS / folder) for name, folder in SIDES_PIPELINES.items()]
    repository = assemble(tmp_path_factory.mktemp("sides") / "model_repository", pipelines)
    with running(repository, tmp_path_factory.mktemp("sides_triton") / "server.log") as srv:
        yield srv
