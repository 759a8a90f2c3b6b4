"""The encoder's budget accounts for length: where attention is materialised a long text weighs
more than its tokens, executions are split to stay under the budget, and a budget the longest
accepted text would exceed alone is refused at load, naming the settings."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from splade_triton.artifacts.repository import Pipeline, assemble
from splade_triton.serving.batching import ATTENTION_TOKENS_PER_HEAD_DIM, attention_length, plan_chunks, row_cost
from splade_triton.serving.limits import check_budget, head_dim
from splade_triton.serving.runtime import fused_attention, open_session
from tests import triton
from tests.conftest import BGE_M3_TINY, bge_m3_pipeline, load_failure, running


def test_a_row_costs_its_tokens_plus_its_scores_where_attention_is_materialised():
    assert attention_length(64, fused=True) == 0 and attention_length(64, fused=False) == 36 * 64
    assert row_cost(512) == 512 and row_cost(8192) == 8192  # fused: linear
    long = attention_length(64, fused=False)
    assert row_cost(long, long) == 2 * long  # the two terms equal there
    assert row_cost(8192, long) > 4 * 8192  # XLM-R large on ONNX Runtime: 37,320 token-equivalents


@pytest.mark.parametrize("attention", [0, 64 * ATTENTION_TOKENS_PER_HEAD_DIM])
def test_every_chunk_stays_within_the_budget(attention):
    rng = np.random.default_rng(0)
    lengths = rng.integers(8, 4000, size=300)
    budget = int(row_cost(4000, attention))  # the longest fits alone
    chunks = plan_chunks(lengths, budget, attention=attention)
    assert sorted(np.concatenate(chunks).tolist()) == list(range(300))
    for chunk in chunks:
        assert len(chunk) * row_cost(float(lengths[chunk].max()), attention) <= budget
    if attention:  # the quadratic term packs long texts fewer to a call than their tokens would
        assert len(chunks) > len(plan_chunks(lengths, budget))


def test_a_budget_the_longest_text_exceeds_alone_is_refused_naming_the_settings():
    check_budget(512, 0, 8192, "openvino")
    check_budget(None, 2304, 8192, "onnxruntime")  # no known limit: nothing to check
    with pytest.raises(ValueError, match=r"max_batch_tokens 4096 .* 8192 tokens .* Raise max_batch_tokens to 8192"):
        check_budget(8192, 0, 4096, "openvino")
    with pytest.raises(ValueError, match=r"costs 37320 token-equivalents on onnxruntime.*runtime openvino"):
        check_budget(8192, 2304, 8192, "onnxruntime")


def test_the_head_width_comes_from_the_export():
    assert head_dim({"hidden_size": 1024, "num_attention_heads": 16}) == 64
    assert head_dim({"hidden_size": 32, "num_attention_heads": 2}) == 16
    assert head_dim({}) == head_dim(None) == 64


def test_openvino_fuses_the_exported_attention_and_onnxruntime_does_not():
    graph = str(BGE_M3_TINY / "model.onnx")
    assert fused_attention(open_session(graph, "openvino")) is True
    assert fused_attention(open_session(graph, "onnxruntime")) is False


def test_the_assembly_bounds_the_encoder_by_the_tokenizers_longest_side(tmp_path):
    configs = bge_m3_pipeline().with_step("tokenizer", parameters={"document_max_length": 300}).configs()
    assert configs["encoder"].parameters["max_text_tokens"].string_value == "300"
    own = bge_m3_pipeline().with_step("encoder", parameters={"max_text_tokens": 100}).configs()
    assert own["encoder"].parameters["max_text_tokens"].string_value == "100"


def test_a_budget_too_small_for_the_longest_text_fails_the_load(tmp_path):
    """The tiny BGE-M3 on ONNX Runtime (scores materialised) with documents up to 512 tokens:
    a budget under that text's cost is refused at load, with the setting to change."""
    pipeline = bge_m3_pipeline().with_step("encoder", parameters={"runtime": "onnxruntime", "max_batch_tokens": 600})
    repository = assemble(tmp_path / "model_repository", [pipeline])
    log = load_failure(repository, tmp_path / "server.log", "max_batch_tokens 600 is too small")
    need = int(np.ceil(row_cost(512, attention_length(16, fused=False))))
    assert f"Raise max_batch_tokens to {need}" in log


def test_long_texts_under_a_budget_of_two_are_answered_exactly(tmp_path, flag_m3):
    """ONNX Runtime, a budget of two 512-token documents' cost: eight documents in one request
    load and are answered as FlagEmbedding answers them (how the execution is cut into calls
    is checked on plan_chunks above; a runtime call cannot be observed from outside)."""
    budget = 2 * int(np.ceil(row_cost(512, attention_length(16, fused=False))))
    pipeline = bge_m3_pipeline().with_step("encoder", parameters={"runtime": "onnxruntime", "max_batch_tokens": budget})
    repository = assemble(tmp_path / "model_repository", [pipeline])
    texts = [" ".join(["word"] * 600 + [str(i)]) for i in range(8)]
    with running(repository, tmp_path / "server.log") as srv:
        answer = triton.client("grpc", srv).infer("bge_m3", [triton.text_input("grpc", texts)],
                                                  outputs=[grpcclient.InferRequestedOutput("dense")])
    want = flag_m3.encode(texts, max_length=512, return_dense=True)["dense_vecs"]
    np.testing.assert_allclose(answer.as_numpy("dense"), want, rtol=0, atol=1e-5)
