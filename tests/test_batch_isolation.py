"""One bad request never fails its batch-mates.

The encoder checks each request on its own (splade_triton.serving.limits) and
a batch that raises anyway is rerun request by request
(RaggedEncoder.run_isolated), so only the request at fault fails.

Served: bad requests sent straight to a composing model among concurrent good
ensemble requests, with a queue delay so that Triton batches them; Triton's own
statistics show that no request ran alone, so the bad ones shared executions
with good ones; each bad one gets its own INVALID_ARGUMENT naming what was
wrong, every good one its correct vector.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from splade_triton.artifacts import asymmetric
from splade_triton.artifacts.repository import Pipeline, assemble
from splade_triton.artifacts.texts import VARIED_TEXTS
from splade_triton.serving.encoding import RaggedEncoder
from splade_triton.serving.limits import check_tokens, max_length, probe_max_length, vocabulary_size
from splade_triton.serving.runtime import open_session
from splade_triton.serving.sides import read_export_info
from tests import triton
from tests.conftest import BGE_M3_TINY, ROOT, bge_m3_pipeline, default_pipeline, running

MODELS = ROOT / "build" / "models"
SPLADE = default_pipeline().model
ROUTER = MODELS / "splade-router-tiny"


# --- the checks, without a server ---------------------------------------------------------


def ids_and_mask(*rows, width=None):
    width = width or max(map(len, rows))
    ids = np.zeros((len(rows), width), np.int64)
    mask = np.zeros_like(ids)
    for r, row in enumerate(rows):
        ids[r, : len(row)], mask[r, : len(row)] = row, 1
    return ids, mask


@pytest.mark.parametrize("inputs,message", [
    (ids_and_mask([101, 30522, 102]), "text 0, position 1: token id 30522 is outside the vocabulary (0 <= id < 30522)"),
    (ids_and_mask([101, 102], [101, -1, 102]), "text 1, position 1: token id -1 is outside the vocabulary"),
    (ids_and_mask([101, 102], [5] * 513), "text 1 has 513 tokens; this encoder takes at most 512 (max_text_tokens: the tokenizer's longest side, within the model's position embeddings)"),
    (ids_and_mask([101, 102], []), "text 1 has no token with attention_mask 1"),
    ((np.ones((1, 3), np.int64), np.array([[1, 2, 1]])), "attention_mask must hold only 0 and 1"),
    ((np.ones((1, 3), np.int64), np.ones((1, 4), np.int64)), "input_ids [1, 3] and attention_mask [1, 4] must have the same 2-D shape"),
    ((np.ones(3, np.int64), np.ones(3, np.int64)), "must have the same 2-D shape [texts, tokens]"),
    ((np.ones((1, 3), np.int32), np.ones((1, 3), np.int64)), "input_ids must be INT64, got int32"),
    ((np.ones((1, 3), np.int64), np.ones((1, 3), np.float32)), "attention_mask must be INT64, got float32"),
])
def test_a_bad_request_is_named(inputs, message):
    problem = check_tokens(*inputs, vocab_size=30522, max_length=512)
    assert problem is not None and message in problem, problem


def test_good_requests_pass():
    assert check_tokens(*ids_and_mask([101, 0, 30521, 102], [101, 102]), 30522, 512) is None
    # Padding is not looked at: its ids and its width beyond the limit.
    ids, mask = ids_and_mask([101, 102], width=600)
    ids[:, 2:] = -7
    assert check_tokens(ids, mask, 30522, 512) is None
    assert check_tokens(*ids_and_mask([5] * 512), 30522, 512) is None
    # A static side's empty text is an empty vector; there is no position limit without positions.
    assert check_tokens(*ids_and_mask([5] * 900, []), 30522, None, allow_empty=True) is None


def ort_session(path: Path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_the_limits_come_from_the_export_or_the_graph(runtime):
    """Exports state their length (SPLADE: BERT's 512 positions; BGE-M3: XLM-R's 514, 2 reserved);
    an older export without it is probed from the graph, which finds the same."""
    splade = open_session(str(SPLADE / "model.onnx"), runtime)
    info = read_export_info(SPLADE)
    assert info["max_length"] == 512
    assert vocabulary_size(info, splade) == 30522 == vocabulary_size(None, splade)
    older = {k: v for k, v in info.items() if k != "max_length"}
    assert max_length(info, splade, 30522) == 512 == max_length(older, splade, 30522)
    # The session still serves after the probe's failed runs.
    ids, mask = ids_and_mask([101, 2054, 102])
    np.testing.assert_allclose(splade.run(["pooled_logits"], {"input_ids": ids, "attention_mask": mask})[0],
                               ort_session(SPLADE / "model.onnx").run(["pooled_logits"], {"input_ids": ids, "attention_mask": mask})[0],
                               rtol=0, atol=1e-4)
    m3 = open_session(str(BGE_M3_TINY / "model.onnx"), runtime)
    m3_info = read_export_info(BGE_M3_TINY)
    assert vocabulary_size(m3_info, m3) == 814 and vocabulary_size(None, m3) is None  # dense is not a vocabulary
    assert max_length(m3_info, m3, 814) == 512 == probe_max_length(m3, 813)


def test_a_failing_batch_fails_only_the_requests_that_fail_alone():
    """Rerun one by one: the good requests get what they get alone, each bad one its own error."""
    encoder = RaggedEncoder(ort_session(SPLADE / "model.onnx"), 8192)
    good = [ids_and_mask([101, 2054, 2003, 102]), ids_and_mask([101, 3000, 102], [101, 7592, 2088, 2003, 102], width=7)]
    alone = [encoder.run([g])[0]["pooled_logits"].copy() for g in good]
    too_long, past_vocab = ids_and_mask([101] + [2054] * 600 + [102]), ids_and_mask([101, 40000, 102])
    with pytest.raises(Exception):
        encoder.run([good[0], too_long, good[1], past_vocab])
    out = encoder.run_isolated([good[0], too_long, good[1], past_vocab])
    assert isinstance(out[1], Exception) and isinstance(out[3], Exception)
    assert "40000" in str(out[3])
    for got, want in zip((out[0], out[2]), alone):
        np.testing.assert_allclose(got["pooled_logits"], want, rtol=0, atol=1e-5)
    # A batch that runs is one run, as before.
    both = encoder.run_isolated(good)
    for got, want in zip(both, alone):
        np.testing.assert_allclose(got["pooled_logits"], want, rtol=0, atol=1e-5)


# --- served: one bad request among good ones in one execution --------------------------------

# Queue delays long enough for concurrent requests to batch: the encoder waits longer than the
# tokenizer, so a direct encoder request sent with the ensemble requests waits for them.
TOKENIZER_DELAY = "dynamic_batching { max_queue_delay_microseconds: 1000000 }"
ENCODER_DELAY = "dynamic_batching { max_queue_delay_microseconds: 5000000 }"
GOOD = VARIED_TEXTS[:16]


def batched(pipeline: Pipeline) -> Pipeline:
    return pipeline.with_step("tokenizer", config=TOKENIZER_DELAY).with_step("encoder", config=ENCODER_DELAY)


@pytest.fixture(scope="module")
def batching_server(tmp_path_factory):
    """splade, bge_m3 and router (an inference-free static query side) in one tritonserver, batching."""
    for folder in (SPLADE, BGE_M3_TINY, ROUTER):
        if not (folder / "export_info.json").is_file():
            pytest.fail(f"{folder} is not exported: run script/setup")
    pipelines = [batched(default_pipeline()), batched(bge_m3_pipeline()),
                 batched(Pipeline("router", "splade", ROUTER))]
    repository = assemble(tmp_path_factory.mktemp("batching") / "model_repository", pipelines)
    with running(repository, tmp_path_factory.mktemp("batching_triton") / "server.log") as srv:
        yield srv


def statistics(server, model: str) -> tuple[int, int, dict[int, int]]:
    """Triton's counters of ``model``: (inferences, executions, {batch size: executions})."""
    stats = triton.client("grpc", server).get_inference_statistics(model, as_json=True)["model_stats"][0]
    sizes = {int(b["batch_size"]): int(b["compute_infer"]["count"]) for b in stats.get("batch_stats", [])}
    return int(stats.get("inference_count", 0)), int(stats.get("execution_count", 0)), sizes


def concurrently(calls):
    """Run every call at once (one thread each, released together); each one's result or server error."""
    results = [None] * len(calls)
    barrier = threading.Barrier(len(calls))

    def run(i):
        barrier.wait()
        try:
            results[i] = calls[i]()
        except triton.InferenceServerException as e:
            results[i] = e

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def assert_no_request_ran_alone(server, model: str, before, requests: int):
    """Every request is one row: no execution of one row means none ran alone, so each
    bad request shared an execution with good ones."""
    after = statistics(server, model)
    inferences, executions = after[0] - before[0], after[1] - before[1]
    ran = {size: n - before[2].get(size, 0) for size, n in after[2].items() if n > before[2].get(size, 0)}
    assert inferences == requests, f"{model}: {inferences} inferences of {requests} requests, executions by size {ran}"
    assert executions < requests and 1 not in ran, f"{model}: {executions} executions of {requests} requests, sizes {ran}"


def sparse_call(server, model, text, parameters=None):
    c = triton.client("grpc", server)
    return lambda: triton.encode("grpc", c, [text], outputs=("indices", "values"), model=model, parameters=parameters)


def dense_call(server, text):
    c = triton.client("grpc", server)
    wanted = [triton.PROTOCOLS["grpc"].InferRequestedOutput("dense")]
    return lambda: {"dense": c.infer("bge_m3", [triton.text_input("grpc", [text])], outputs=wanted).as_numpy("dense")}


def direct_call(server, model, ids, parameters=None):
    """A request straight to a composing encoder: input_ids [1, L] as given, mask all ones."""
    mod, c = triton.PROTOCOLS["grpc"], triton.client("grpc", server)
    ids = np.asarray([ids], dtype=np.int64)
    inputs = [mod.InferInput("input_ids", list(ids.shape), "INT64"), mod.InferInput("attention_mask", list(ids.shape), "INT64")]
    inputs[0].set_data_from_numpy(ids)
    inputs[1].set_data_from_numpy(np.ones_like(ids))
    return lambda: c.infer(model, inputs, parameters=parameters)


@pytest.fixture(scope="module")
def expected(reference_encode, flag_m3):
    """pipeline -> the reference vectors of GOOD: transformers (splade), FlagEmbedding's dense
    vectors (bge_m3), sentence-transformers' encode_query (router)."""
    router, _ = asymmetric.st_reference(asymmetric.inspect(MODELS / "splade-router-tiny-src"), GOOD)
    dense = flag_m3.encode(GOOD, batch_size=4, return_dense=True, return_sparse=False, return_colbert_vecs=False)
    return {"splade": reference_encode(GOOD), "bge_m3": dense["dense_vecs"], "router": router["query"]}


def good_calls(server, pipeline):
    if pipeline == "bge_m3":
        return [dense_call(server, t) for t in GOOD]
    parameters = {"input_type": "query"} if pipeline == "router" else None
    return [sparse_call(server, pipeline, t, parameters) for t in GOOD]


def assert_good(pipeline, results, expected):
    for i, got in enumerate(results):
        assert not isinstance(got, Exception), f"good request {i} failed: {got}"
        if pipeline == "bge_m3":
            np.testing.assert_allclose(got["dense"][0], expected[pipeline][i], rtol=0, atol=1e-5)
        else:
            dense = triton.densify(got["indices"], got["values"], 30522)[0]
            np.testing.assert_allclose(dense, expected[pipeline][i], rtol=0, atol=1e-4)
            np.testing.assert_array_equal(dense != 0, expected[pipeline][i] != 0)


ENCODER_CASES = {
    # pipeline, the bad input_ids, its input_type, the message
    "splade id past the vocabulary": ("splade", [101, 30522, 102], None,
                                      "text 0, position 1: token id 30522 is outside the vocabulary (0 <= id < 30522)"),
    "splade negative id": ("splade", [101, -1, 102], None, "token id -1 is outside the vocabulary"),
    "splade past the positions": ("splade", [101] + [2054] * 600 + [102], None,
                                  "text 0 has 602 tokens; this encoder takes at most 512 (max_text_tokens: the tokenizer's longest side, within the model's position embeddings)"),
    "bge_m3 id past the vocabulary": ("bge_m3", [0, 814, 2], None, "token id 814 is outside the vocabulary (0 <= id < 814)"),
    "bge_m3 negative id": ("bge_m3", [0, -5, 2], None, "token id -5 is outside the vocabulary"),
    "bge_m3 past the positions": ("bge_m3", [0] + [10] * 600 + [2], None,
                                  "text 0 has 602 tokens; this encoder takes at most 512 (max_text_tokens: the tokenizer's longest side, within the model's position embeddings)"),
    "static query side id past the vocabulary": ("router", [2054, 30522], {"input_type": "query"},
                                                 "token id 30522 is outside the vocabulary (0 <= id < 30522)"),
    "static query side negative id": ("router", [2054, -1], {"input_type": "query"}, "token id -1 is outside the vocabulary"),
}


@pytest.mark.parametrize("case", list(ENCODER_CASES))
def test_a_bad_direct_encoder_request_fails_alone(batching_server, expected, case):
    pipeline, ids, parameters, message = ENCODER_CASES[case]
    encoder = f"{pipeline}_encoder"
    calls = good_calls(batching_server, pipeline)
    calls.insert(len(calls) // 2, direct_call(batching_server, encoder, ids, parameters))
    before = statistics(batching_server, encoder)
    results = concurrently(calls)
    bad = results.pop(len(calls) // 2)
    assert_good(pipeline, results, expected)
    assert isinstance(bad, Exception), f"the bad request was answered: {bad}"
    assert triton.is_invalid_arg(bad) and message in bad.message(), bad
    assert_no_request_ran_alone(batching_server, encoder, before, len(calls))


TOKENIZER_CASES = {
    "not utf-8": (b"caf\xe9 au lait", "text 0 is not valid UTF-8"),
    "too long": ("x" * 65537, "text 0 is 65537 bytes; the limit is 65536 bytes (max_text_bytes)"),
}


@pytest.mark.parametrize("pipeline", ["splade", "bge_m3"])
def test_bad_texts_fail_alone_in_the_tokenizer(batching_server, expected, pipeline):
    """Bad texts among good ones, every one an ensemble request: the bad ones fail in
    the tokenizer's execution they share with good ones."""
    calls = good_calls(batching_server, pipeline)
    c = triton.client("grpc", batching_server)
    bad = [lambda text=text: c.infer(pipeline, [triton.text_input("grpc", [text])]) for text, _ in TOKENIZER_CASES.values()]
    tokenizer = f"{pipeline}_tokenizer"
    before = statistics(batching_server, tokenizer)
    results = concurrently(bad + calls)
    assert_good(pipeline, results[len(bad):], expected)
    for (_, message), error in zip(TOKENIZER_CASES.values(), results):
        assert isinstance(error, Exception) and triton.is_invalid_arg(error) and message in error.message(), error
    assert_no_request_ran_alone(batching_server, tokenizer, before, len(bad) + len(calls))
