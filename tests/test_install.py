"""train.install's reload: a running server serves the configuration just assembled, without a restart."""

from __future__ import annotations

from splade_triton.artifacts.repository import assemble
from splade_triton.launcher.admin import Admin
from tests import triton
from tests.conftest import default_pipeline, running
from train.install import reload_pipeline

LONG = "word " * 600  # 602 tokens: beyond 512


def _width(server) -> int:
    """Tokens the served tokenizer keeps of a long document."""
    c = triton.client("grpc", server)
    return c.infer("splade_tokenizer", [triton.text_input("grpc", [LONG])]).as_numpy("input_ids").shape[1]


def test_a_reload_serves_the_spec_just_assembled(tmp_path):
    stock = default_pipeline()
    repository = assemble(tmp_path / "model_repository", [stock])
    with running(repository, tmp_path / "server.log") as server:
        assert _width(server) == 512
        before = triton.encode("grpc", triton.client("grpc", server), [LONG], outputs=("indices", "values"))
        changed = stock.with_step("tokenizer", {"max_length": 64})
        assemble(repository, [changed])  # what train.install does to the repository, with a new spec setting
        reloaded = reload_pipeline(Admin("127.0.0.1", server.http_port, server.admin_key), changed, repository)
        assert set(reloaded[:3]) == {"splade_tokenizer", "splade_encoder", "splade_sparsify"}  # steps first
        assert _width(server) == 64  # the same server process, the new setting
        after = triton.encode("grpc", triton.client("grpc", server), [LONG], outputs=("indices", "values"))
        assert triton.client("grpc", server).is_model_ready("splade")
    assert after["indices"].tolist() != before["indices"].tolist() or after["values"].tolist() != before["values"].tolist()
