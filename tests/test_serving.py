"""The splade ensemble on a real tritonserver, over HTTP and gRPC."""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from splade_triton.artifacts.texts import VARIED_TEXTS
from splade_triton.serving.splade import activate
from tests import triton
from tests.conftest import assemble_variant, running

PROTOCOLS = ["http", "grpc"]


@pytest.fixture(params=PROTOCOLS)
def protocol(request):
    return request.param


@pytest.fixture
def client(protocol, server):
    return triton.client(protocol, server)


def test_server_and_models_are_ready(server, client):
    assert client.is_server_ready()
    for model in ("splade", "splade_embedding", "splade_windows", "splade_tokenizer", "splade_encoder", "splade_sparsify"):
        assert client.is_model_ready(model)


def test_ensemble_contract(server):
    config = triton.client("grpc", server).get_model_config("splade", as_json=True)["config"]
    assert config["platform"] == "ensemble"
    assert int(config["max_batch_size"]) >= 64
    assert [(i["name"], i["data_type"]) for i in config["input"]] == [("text", "TYPE_STRING")]
    outputs = {o["name"]: o["data_type"] for o in config["output"]}
    per_text = {"num_tokens": "TYPE_INT32", "truncated": "TYPE_BOOL", "windows": "TYPE_INT32"}
    assert outputs == {"indices": "TYPE_INT32", "values": "TYPE_FP32", "tokens": "TYPE_STRING", **per_text}
    config = triton.client("grpc", server).get_model_config("splade_embedding", as_json=True)["config"]
    assert config["platform"] == "ensemble"
    assert [(i["name"], i["data_type"]) for i in config["input"]] == [("text", "TYPE_STRING")]
    assert [(o["name"], o["data_type"]) for o in config["output"]] == [("embedding", "TYPE_FP32")] + list(per_text.items())


def test_capital_of_france(protocol, client):
    out = triton.encode(protocol, client, ["what is the capital of france"])
    terms = [t.decode() for t in out["tokens"][0] if t]
    assert {"capital", "france", "paris"} <= set(terms)
    assert terms[:2] == ["capital", "france"]


def test_matches_the_reference_formula(protocol, client, reference_encode, vocab_size):
    """Every vocabulary entry within 1e-4 and the same non-zero terms, for varied texts."""
    out = triton.encode(protocol, client, VARIED_TEXTS)
    expected = reference_encode(VARIED_TEXTS)
    got = triton.densify(out["indices"], out["values"], vocab_size)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)
    np.testing.assert_array_equal(got > 0, expected > 0)
    np.testing.assert_allclose(out["embedding"], expected, rtol=0, atol=1e-4)


def test_output_layout(protocol, client):
    texts = ["a", "what is the capital of france", "the tower was built from 1887 to 1889 in paris"]
    out = triton.encode(protocol, client, texts)
    indices, values, tokens, embedding = (out[k] for k in ("indices", "values", "tokens", "embedding"))
    assert indices.dtype == np.int32 and values.dtype == np.float32
    assert indices.shape == values.shape == tokens.shape
    counts = (indices >= 0).sum(axis=1)
    assert indices.shape[1] == counts.max() == (embedding > 0).sum(axis=1).max()
    for row, n in enumerate(counts):
        assert np.all(indices[row, n:] == -1) and np.all(values[row, n:] == 0) and all(t == b"" for t in tokens[row, n:])
        assert np.all(values[row, :n] > 0) and np.all(np.diff(values[row, :n]) <= 0)
        np.testing.assert_array_equal(values[row, :n], embedding[row, indices[row, :n]])


def test_tokens_name_the_indices(protocol, client, reference_model):
    tokenizer = reference_model[0]
    out = triton.encode(protocol, client, ["Zürich weather forecast"], outputs=("indices", "tokens"))
    n = (out["indices"][0] >= 0).sum()
    assert [t.decode() for t in out["tokens"][0, :n]] == tokenizer.convert_ids_to_tokens(out["indices"][0, :n].tolist())


def test_top_k_and_min_weight_per_request(protocol, client):
    text = ["the eiffel tower is a wrought-iron lattice tower in paris"]
    full = triton.encode(protocol, client, text)
    top = triton.encode(protocol, client, text, parameters={"top_k": 5})
    assert top["indices"].shape == (1, 5)
    np.testing.assert_array_equal(top["indices"], full["indices"][:, :5])
    np.testing.assert_array_equal(top["embedding"], full["embedding"])  # top_k shapes the sparse form only
    heavy = triton.encode(protocol, client, text, parameters={"min_weight": 1.0})
    n = (full["values"][0] >= 1.0).sum()
    assert 0 < n < full["indices"].shape[1]
    np.testing.assert_array_equal(heavy["indices"][0], full["indices"][0, :n])
    both = triton.encode(protocol, client, text, parameters={"top_k": 2, "min_weight": 0.5})
    np.testing.assert_array_equal(both["indices"][0], full["indices"][0, :2])


def test_texts_over_max_length_are_truncated(protocol, client, reference_encode, vocab_size):
    long = "paris " * 2000  # 2000+ tokens: the tokenizer keeps the first 512
    out = triton.encode(protocol, client, [long, long + "london"])
    np.testing.assert_array_equal(out["indices"][0], out["indices"][1])  # "london" is past the cut
    np.testing.assert_allclose(triton.densify(out["indices"], out["values"], vocab_size)[:1], reference_encode([long]), atol=1e-4)


def test_same_vector_alone_and_in_concurrent_batches(server, vocab_size):
    """A text's vector does not depend on what it was batched with."""
    texts = VARIED_TEXTS * 4
    alone = {}
    grpc = triton.client("grpc", server)
    for t in VARIED_TEXTS:
        out = triton.encode("grpc", grpc, [t], outputs=("indices", "values"))
        alone[t] = triton.densify(out["indices"], out["values"], vocab_size)[0]

    # 64 concurrent requests of 1 to 4 mixed texts each.
    rng = np.random.default_rng(0)
    requests = [[texts[j] for j in rng.choice(len(texts), size=rng.integers(1, 5))] for _ in range(64)]

    def call(batch):
        c = triton.client("grpc", server)
        out = triton.encode("grpc", c, batch, outputs=("indices", "values"))
        return triton.densify(out["indices"], out["values"], vocab_size)

    before = encoder_counts(server)
    with ThreadPoolExecutor(64) as pool:
        results = list(pool.map(call, requests))
    after = encoder_counts(server)
    for batch, dense in zip(requests, results):
        for t, vec in zip(batch, dense):
            np.testing.assert_allclose(vec, alone[t], rtol=0, atol=1e-5)
            np.testing.assert_array_equal(vec > 0, alone[t] > 0)
    inferences, executions = after[0] - before[0], after[1] - before[1]
    assert inferences == sum(len(b) for b in requests)
    # Concurrent requests of different lengths were merged into encoder executions.
    assert executions < 64


def encoder_counts(server) -> tuple[int, int]:
    """Triton's (inference count, execution count) of the encoder, from /metrics."""
    text = server.metrics()

    def value(metric):
        m = re.search(rf'^{metric}{{model="splade_encoder",version="1"}} (\S+)$', text, re.M)
        return int(float(m.group(1)))

    return value("nv_inference_count"), value("nv_inference_exec_count")


def test_embedding_only_from_splade_embedding(protocol, client, server):
    """`splade` has no `embedding`; `splade_embedding` returns activate(pooled logits)."""
    texts = ["what is the capital of france", "the tower was built from 1887 to 1889 in paris " * 4]
    mod = triton.PROTOCOLS[protocol]
    e = triton.error_of(lambda: client.infer("splade", [triton.text_input(protocol, texts)],
                                             outputs=[mod.InferRequestedOutput("embedding")]))
    assert "embedding" in e.message()
    plain = client.infer("splade", [triton.text_input(protocol, texts)])  # every output it has
    assert plain.as_numpy("embedding") is None and plain.as_numpy("indices") is not None

    embedding = client.infer("splade_embedding", [triton.text_input(protocol, texts)]).as_numpy("embedding")
    ids = client.infer("splade_tokenizer", [triton.text_input(protocol, texts)])
    inputs = []
    for name in ("input_ids", "attention_mask"):
        tensor = mod.InferInput(name, list(ids.as_numpy(name).shape), "INT64")
        tensor.set_data_from_numpy(ids.as_numpy(name))
        inputs.append(tensor)
    pooled = client.infer("splade_encoder", inputs).as_numpy("pooled_logits")
    np.testing.assert_allclose(embedding, activate(pooled.copy()), rtol=0, atol=1e-6)
    sparse = triton.encode(protocol, client, texts, outputs=("indices", "values"))
    np.testing.assert_allclose(triton.densify(sparse["indices"], sparse["values"], embedding.shape[1]), embedding,
                               rtol=0, atol=1e-6)


@pytest.fixture(scope="module")
def batch_padded_server(tmp_path_factory):
    """The repository with the tokenizer set up for a fixed-shape (GPU) encoder."""
    repository = assemble_variant(tmp_path_factory.mktemp("batch-padding"),
                                  tokenizer={"parameters": {"pad_to_multiple_of": "32"}})
    with running(repository, repository.parent / "server.log") as srv:
        yield srv


def test_batch_padding_for_fixed_shape_encoders(batch_padded_server, reference_encode, vocab_size):
    c = triton.client("grpc", batch_padded_server)
    ids = triton.PROTOCOLS["grpc"].InferRequestedOutput("input_ids")
    result = c.infer("splade_tokenizer", [triton.text_input("grpc", ["a", "what is the capital city of france"])], outputs=[ids])
    assert result.as_numpy("input_ids").shape == (2, 32)  # 9 tokens, rounded up to a multiple of 32
    out = triton.encode("grpc", c, VARIED_TEXTS, outputs=("indices", "values"))
    got = triton.densify(out["indices"], out["values"], vocab_size)
    expected = reference_encode(VARIED_TEXTS)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)
    np.testing.assert_array_equal(got > 0, expected > 0)


def tokenizer_counts(server) -> tuple[int, int]:
    text = server.metrics()

    def value(metric):
        m = re.search(rf'^{metric}{{model="splade_tokenizer",version="1"}} (\S+)$', text, re.M)
        return int(float(m.group(1)))

    return value("nv_inference_count"), value("nv_inference_exec_count")


def test_batch_padding_pads_each_request_to_its_own_bucket(batch_padded_server):
    """Queries batched with a 512-token passage in one tokenizer execution keep
    their own 32-token bucket: the fixed-shape encoder gets [n, 32] and [1, 512],
    never every request padded to 512."""
    passage = "the tower was built from 1887 to 1889 in paris " * 60  # truncated to 512 tokens
    requests = [[passage] if i % 16 == 0 else ["what is the capital of france"] * (1 + i % 3) for i in range(64)]
    mod = triton.PROTOCOLS["grpc"]

    def call(texts):
        c = triton.client("grpc", batch_padded_server)
        return c.infer("splade_tokenizer", [triton.text_input("grpc", texts)],
                       outputs=[mod.InferRequestedOutput("input_ids")]).as_numpy("input_ids").shape

    before = tokenizer_counts(batch_padded_server)
    with ThreadPoolExecutor(64) as pool:
        shapes = list(pool.map(call, requests))
    after = tokenizer_counts(batch_padded_server)
    # Some executions held several requests, passages among them.
    assert after[1] - before[1] < after[0] - before[0]
    for texts, shape in zip(requests, shapes):
        assert shape == (len(texts), 512 if texts[0] is passage else 32)


@pytest.fixture(scope="module")
def forwarding_server(tmp_path_factory):
    """tritonserver forwarding x-gateway-* headers as request parameters (as NVIDIA
    Cloud Functions and API gateways do)."""
    repository = assemble_variant(tmp_path_factory.mktemp("forwarding"))
    pattern = "x-gateway-.*"
    with running(repository, repository.parent / "server.log",
                 extra_args=("--grpc-header-forward-pattern", pattern, "--http-header-forward-pattern", pattern)) as srv:
        yield srv


def test_forwarded_headers_do_not_fail_requests(protocol, forwarding_server):
    c = triton.client(protocol, forwarding_server)
    texts = ["what is the capital of france"]
    headers = {"x-gateway-request-id": "7f3a9c", "x-gateway-tenant": "acme"}
    mod = triton.PROTOCOLS[protocol]
    result = c.infer("splade", [triton.text_input(protocol, texts)], headers=headers, parameters={"top_k": 3},
                     outputs=[mod.InferRequestedOutput("tokens")])
    assert result.as_numpy("tokens")[0].tolist() == [b"capital", b"france", b"french"]
    embedding = c.infer("splade_embedding", [triton.text_input(protocol, texts)], headers=headers)
    assert embedding.as_numpy("embedding").shape[0] == 1
    # A forwarded header that looks like an option is refused, not silently dropped.
    e = triton.error_of(lambda: c.infer("splade", [triton.text_input(protocol, texts)],
                                        headers={"x-gateway-top-k": "3"}))
    assert triton.is_invalid_arg(e) and "did you mean top_k" in e.message(), e


@pytest.fixture(scope="module")
def short_tokenizer_server(tmp_path_factory):
    """sparsify's tokenizer.json knows only ids < 2000 while the encoder scores all
    30522: the same situation as an MLM head padded past the tokenizer (30528 vs 30522)."""
    repository = assemble_variant(tmp_path_factory.mktemp("short-vocab"))
    path = repository / "splade_sparsify" / "1" / "tokenizer.json"
    spec = json.loads(path.read_text())
    spec["model"]["vocab"] = {t: i for t, i in spec["model"]["vocab"].items() if i < SHORT_VOCAB}
    path.unlink()  # a hard link to the exported file: never write through it
    path.write_text(json.dumps(spec))
    with running(repository, repository.parent / "server.log") as srv:
        yield srv


SHORT_VOCAB = 2000


def test_ids_past_the_tokenizer_get_a_term_not_an_error(short_tokenizer_server, server, reference_model):
    tokenizer = reference_model[0]
    texts = ["what is the capital of france", "Zürich weather forecast"]
    c = triton.client("grpc", short_tokenizer_server)
    out = triton.encode("grpc", c, texts, outputs=("indices", "values", "tokens"))
    full = triton.encode("grpc", triton.client("grpc", server), texts, outputs=("indices", "values"))
    np.testing.assert_array_equal(out["indices"], full["indices"])
    np.testing.assert_array_equal(out["values"], full["values"])
    assert (out["indices"] >= SHORT_VOCAB).any()
    for idx, tok in zip(out["indices"].ravel().tolist(), out["tokens"].ravel().tolist()):
        if idx < 0:
            assert tok == b""
        elif idx < SHORT_VOCAB:
            assert tok.decode() == tokenizer.convert_ids_to_tokens(idx)
        else:
            assert tok == f"[unused{idx}]".encode()
