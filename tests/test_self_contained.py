"""The assembled repository serves from its own copies of splade_triton.serving.

Every Python model of an assembled repository has a copy of the serving package
beside its model.py. The Python-backend stub puts tritonserver's working
directory first on sys.path, so without care a server started from the checkout
(script/serve) imports the checkout's package and the copies are never tried:
a repository copied to S3 or a stock image could then fail where the tests
passed, and edits to the checkout leak into a running server.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from splade_triton.artifacts.repository import assemble
from tests import triton
from tests.conftest import ROOT, Server, bge_m3_pipeline, default_pipeline, running

BROKEN = "this copy of splade_triton.serving is broken on purpose"


def _python_models(repository: Path) -> list[Path]:
    return sorted(p.parent for p in repository.glob("*/1/model.py"))


def test_a_broken_copy_beside_each_model_fails_to_load_from_the_checkout(tmp_path):
    """Started from the checkout (as script/serve does), the copies are what the models import."""
    repository = assemble(tmp_path / "model_repository", [default_pipeline(), bge_m3_pipeline()])
    models = _python_models(repository)
    assert {m.parent.name for m in models} >= {"splade_tokenizer", "splade_encoder", "splade_sparsify", "bge_m3_lexical"}
    for model in models:
        (model / "splade_triton" / "serving" / "params.py").write_text(f"raise ImportError({BROKEN!r})\n")
    names = {m.parent.name for m in models}

    def failed(log: str) -> set[str]:
        return {name for name in names for line in log.splitlines() if f"'{name}'" in line and BROKEN in line}

    server = Server(repository, tmp_path / "server.log")
    try:
        deadline = time.monotonic() + 120
        while failed(server.log()) != names and server.process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        # Each Python model tried its own broken copy (none fell back to the checkout's package).
        assert failed(server.log()) == names, server.log()[-3000:]
        assert not server.is_ready()
    finally:
        server.stop()


def test_intact_copies_serve_outside_the_checkout_whatever_the_working_directory(tmp_path, server):
    """A plain copy of the repository, the server started from a directory whose own
    ``splade_triton`` raises at import: the stubs cannot reach the checkout, and the
    models serve the same vectors as the checkout's server."""
    built = assemble(tmp_path / "built", [default_pipeline()])
    copy = tmp_path / "elsewhere" / "model_repository"
    shutil.copytree(built, copy)  # as S3 or KServe's storage initializer would: plain files
    shutil.rmtree(built)
    workdir = tmp_path / "workdir"
    (workdir / "splade_triton" / "serving").mkdir(parents=True)
    for package in ("splade_triton", "splade_triton/serving"):
        (workdir / package / "__init__.py").write_text(f"raise ImportError({BROKEN!r})\n")
    assert ROOT not in copy.parents and ROOT not in workdir.parents

    with running(copy, tmp_path / "server.log", cwd=workdir) as srv:
        assert BROKEN not in srv.log()
        triton.assert_serves_alike(srv, server, ["what is the capital of france", "", "naïve café — 東京"])
