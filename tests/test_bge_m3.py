"""The bge_m3 pipeline: serving math on synthetic arrays, the assembly's checks, and
fidelity to FlagEmbedding's BGEM3FlagModel over HTTP and gRPC from a real tritonserver."""

from __future__ import annotations

import dataclasses
import json
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from splade_triton.artifacts.repository import Pipeline, assemble, pipeline_configs, skipped
from splade_triton.serving.bge_m3 import lexical_weights, read_export_info
from splade_triton.serving.params import parse_text_options
from splade_triton.serving.encoding import RaggedEncoder
from tests import triton
from tests.conftest import BGE_M3_QUERY_MAX_LENGTH, BGE_M3_TINY, bge_m3_pipeline

SPECIAL = (0, 1, 2, 3)  # <s> <pad> </s> <unk>


# ---------------------------------------------------------------- lexical math


def flag_lexical(ids, weights, special=SPECIAL) -> dict[str, float]:
    """FlagEmbedding's _process_token_weights, literally."""
    result = defaultdict(int)
    for w, idx in zip(weights, ids):
        if idx not in special and w > 0:
            if w > result[str(idx)]:
                result[str(idx)] = w
    return dict(result)


def rows_as_dicts(batch):
    return [{str(int(i)): float(v) for i, v in zip(idx, val)} for idx, val in batch.rows()]


def test_lexical_weights_equal_flagembeddings_reduction():
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 12, size=(5, 30))  # many repeats, specials among them
    weights = np.maximum(rng.normal(size=ids.shape), 0).astype(np.float32)
    weights[1] = 0  # a text without any weight
    weights[2, 10:] = 0  # padding
    batch = lexical_weights(ids, weights, SPECIAL)
    assert batch.indices.dtype == np.int32 and batch.values.dtype == np.float32
    for got, row_ids, row_w in zip(rows_as_dicts(batch), ids, weights):
        want = flag_lexical(row_ids.tolist(), row_w.tolist())
        assert got.keys() == want.keys()
        for key in want:
            assert got[key] == pytest.approx(want[key], abs=0)
    assert batch.counts[1] == 0 and (batch.indices[1] == -1).all() and (batch.values[1] == 0).all()
    for idx, val in batch.rows():
        assert (np.diff(val) <= 0).all()
        assert not set(idx.tolist()) & set(SPECIAL)


def test_lexical_weights_sorting_ties_top_k_and_min_weight():
    ids = np.array([[0, 7, 5, 9, 5, 4, 2]])
    w = np.array([[9.0, 0.5, 0.25, 0.5, 0.75, 0.1, 9.0]], dtype=np.float32)
    full = lexical_weights(ids, w, SPECIAL)
    assert full.indices.tolist() == [[5, 7, 9, 4]]  # 5 (max 0.75), then the 0.5 tie by id, then 4
    assert full.values.tolist() == [[0.75, 0.5, 0.5, 0.10000000149011612]]
    top = lexical_weights(ids, w, SPECIAL, top_k=2)
    assert top.indices.tolist() == [[5, 7]]
    heavy = lexical_weights(ids, w, SPECIAL, min_weight=0.5)
    assert heavy.indices.tolist() == [[5, 7, 9]]
    none = lexical_weights(ids, w, SPECIAL, min_weight=1e308)
    assert none.indices.shape == (1, 0)
    # <mask> (250001 in XLM-R) is not special: kept.
    assert lexical_weights(np.array([[250001]]), np.array([[1.0]], np.float32), SPECIAL).indices.tolist() == [[250001]]
    with pytest.raises(ValueError, match="same 2-D shape"):
        lexical_weights(ids, w[:, :3], SPECIAL)


@pytest.mark.parametrize("params,want", [
    ("", "document"), ("{}", "document"), ('{"input_type": "query"}', "query"),
    ('{"input_type": "passage"}', "document"), ('{"input_type": "document", "top_k": 3}', "document"),
])
def test_input_type(params, want):
    assert parse_text_options(params).input_type == want


@pytest.mark.parametrize("params,message", [
    ('{"input_type": "doc"}', "input_type must be 'query' or 'document'"),
    ('{"input_type": 1}', "got 1"),
    ('{"input-type": "query"}', "unknown request parameter(s): input-type (did you mean input_type?)"),
    ('{"inputType": "query"}', "did you mean input_type?"),
])
def test_bad_input_type(params, message):
    with pytest.raises(ValueError) as info:
        parse_text_options(params)
    assert message in str(info.value)


# ------------------------------------------------- ragged encoder, several outputs


class _Output:
    def __init__(self, name, shape):
        self.name, self.shape = name, shape


class FakeM3Session:
    """A graph with BGE-M3's interface whose outputs depend on each text alone:
    dense [b, 3], token_weights [b, s], colbert [b, s-1, 2]."""

    def __init__(self):
        self.calls = []

    def get_outputs(self):
        return [_Output("dense", ["b", 3]), _Output("token_weights", ["b", "s"]), _Output("colbert", ["b", "s1", 2])]

    def run(self, names, feeds):
        ids, mask = feeds["input_ids"].astype(np.float32), feeds["attention_mask"].astype(np.float32)
        self.calls.append(ids.shape)
        pos = np.cumsum(mask, axis=1)
        out = {
            "dense": np.stack([(ids * mask).sum(1), mask.sum(1), ids[:, 0]], axis=1),
            "token_weights": ids * 0.5 * mask,
            "colbert": np.stack([ids[:, 1:] * mask[:, 1:], pos[:, 1:] * mask[:, 1:]], axis=2),
        }
        return [out[n] for n in names]


def _request(rows, extra=0):
    length = max(map(len, rows)) + extra
    ids = np.zeros((len(rows), length), np.int64)
    mask = np.zeros_like(ids)
    for r, row in enumerate(rows):
        ids[r, : len(row)], mask[r, : len(row)] = row, 1
    return ids, mask


@pytest.mark.parametrize("budget", [1, 7, 64, 8192])
def test_ragged_encoder_scatters_per_text_and_per_token_outputs_to_each_request(budget):
    rng = np.random.default_rng(1)
    requests = [[list(rng.integers(4, 50, size=n)) for n in sizes] for sizes in ([3, 9, 1], [5], [12, 2], [1])]
    session = FakeM3Session()
    encoder = RaggedEncoder(session, budget, {"token_weights": 0, "colbert": 1})
    batches = [_request(rows, extra=k) for k, rows in enumerate(requests)]
    out = encoder.run(batches)
    for (ids, mask), rows, got in zip(batches, requests, out):
        assert set(got) == {"dense", "token_weights", "colbert"}
        assert got["token_weights"].shape == ids.shape
        assert got["colbert"].shape == (ids.shape[0], ids.shape[1] - 1, 2)
        for r, row in enumerate(rows):
            alone = dict(zip(["dense", "token_weights", "colbert"], session.run(
                ["dense", "token_weights", "colbert"], dict(zip(("input_ids", "attention_mask"), _request([row]))))))
            np.testing.assert_array_equal(got["dense"][r], alone["dense"][0])
            np.testing.assert_array_equal(got["token_weights"][r, : len(row)], alone["token_weights"][0])
            assert (got["token_weights"][r, len(row):] == 0).all()
            np.testing.assert_array_equal(got["colbert"][r, : len(row) - 1], alone["colbert"][0])
            assert (got["colbert"][r, len(row) - 1:] == 0).all()
    # The token budget bounds every call; a text longer than it runs alone.
    assert all(b * s <= max(budget, 12) for b, s in session.calls if b > 1)


def test_ragged_encoder_copies_only_the_outputs_asked_for():
    encoder = RaggedEncoder(FakeM3Session(), 8192, {"token_weights": 0, "colbert": 1})
    for batches in ([_request([[5, 6, 7]])], [_request([[5, 6, 7], [8]]), _request([[9]], extra=2)]):
        out = encoder.run(batches, ["dense", "token_weights"])
        assert all(set(o) == {"dense", "token_weights"} for o in out)
    with pytest.raises(ValueError, match="no output"):
        encoder.run([_request([[5]])], ["pooled_logits"])
    with pytest.raises(ValueError, match="no output"):
        RaggedEncoder(FakeM3Session(), 8192, {"colbert_vecs": 1})


def test_one_long_text_runs_alone_never_padded_with_others():
    session = FakeM3Session()
    encoder = RaggedEncoder(session, 8192, {"token_weights": 0, "colbert": 1})
    long_text, queries = list(range(4, 4 + 8192)), [[5, 6, 7]] * 40
    encoder.run([_request(queries), _request([long_text]), _request(queries[:3], extra=5)])
    assert sorted(session.calls) == [(1, 8192), (43, 3)]


# ---------------------------------------------------------------- assembly


def fake_export(folder: Path, max_length: int = 512) -> Path:
    folder.mkdir(parents=True)
    for name in ("model.onnx", "tokenizer.json"):
        (folder / name).write_text("x")
    (folder / "export_info.json").write_text(json.dumps({
        "kind": "bge_m3", "max_length": max_length, "hidden_size": 8, "max_position_embeddings": max_length + 2,
        "special_ids": {"cls": 0, "pad": 1, "eos": 2, "unk": 3}}))
    return folder


def test_lengths_are_bounded_by_the_models_position_embeddings(tmp_path):
    model = fake_export(tmp_path / "tiny", max_length=128)
    pipeline = Pipeline("m3", "bge_m3", model)
    params = pipeline_configs(pipeline)["tokenizer"].parameters
    # Template defaults (512 / 8192) lowered to what the model serves.
    assert (params["query_max_length"].string_value, params["document_max_length"].string_value) == ("128", "128")
    shorter = pipeline.with_step("tokenizer", parameters={"query_max_length": 16})
    assert pipeline_configs(shorter)["tokenizer"].parameters["query_max_length"].string_value == "16"
    with pytest.raises(ValueError, match=r"document_max_length = 8192 is beyond what the model serves: 128 tokens"):
        pipeline_configs(pipeline.with_step("tokenizer", parameters={"document_max_length": 8192}))
    info = read_export_info(model / "export_info.json")
    assert info["special_ids"]["pad"] == 1


def test_one_tokenizer_and_one_sparse_step_for_both_kinds(tmp_path):
    """Both kinds serve templates/common/tokenizer/model.py; sparsify and lexical
    are the same SparseStep around their own reduction (serving/sparse.py)."""
    from tests.conftest import default_pipeline

    output = assemble(tmp_path / "repo", [Pipeline("m3", "bge_m3", fake_export(tmp_path / "m3")), default_pipeline()])
    tokenizers = {(output / name / "1" / "model.py").read_bytes() for name in ("m3_tokenizer", "splade_tokenizer")}
    assert len(tokenizers) == 1
    for name in ("m3_lexical", "splade_sparsify"):
        assert "(SparseStep)" in (output / name / "1" / "model.py").read_text()
    # The assembly writes each side's length into both kinds' tokenizer configs (sides.effective_length).
    splade = pipeline_configs(default_pipeline())["tokenizer"].parameters
    assert (splade["query_max_length"].string_value, splade["document_max_length"].string_value) == ("512", "512")


def test_lexical_rows_are_the_shared_sparse_rows():
    from splade_triton.serving.sparse import sparse_rows

    ids = np.array([[0, 7, 5, 7, 9, 2]])
    w = np.array([[0.9, 0.5, 0.5, 0.25, 0.75, 0.9]], np.float32)
    got = lexical_weights(ids, w, SPECIAL, top_k=2)
    want = sparse_rows(1, np.zeros(3, np.int64), np.array([5, 7, 9]), np.array([0.5, 0.5, 0.75], np.float32), top_k=2)
    assert got.indices.tolist() == want.indices.tolist() == [[9, 5]]
    assert got.values.tolist() == want.values.tolist() == [[0.75, 0.5]]


def test_an_optional_pipeline_without_its_export_is_skipped_with_the_reason(tmp_path, capsys):
    spec = tmp_path / "later.toml"
    spec.write_text(f'kind = "bge_m3"\nmodel = "{tmp_path / "not-yet"}"\noptional = true\n')
    later = Pipeline.load(spec)
    assert later.optional and skipped([later]) == {"later": skipped([later])["later"]}
    here = Pipeline("here", "bge_m3", fake_export(tmp_path / "here"))
    output = assemble(tmp_path / "repo", [here, later])
    assert "optional pipeline 'later' skipped: its model directory" in capsys.readouterr().err
    assert sorted(p.name for p in output.iterdir()) == ["here", "here_colbert", "here_encoder", "here_lexical", "here_tokenizer"]
    spec.write_text('kind = "bge_m3"\noptional = "yes"\n')
    with pytest.raises(ValueError, match="'optional' must be true or false"):
        Pipeline.load(spec)
    # Not optional: a missing export fails the assembly, as before.
    with pytest.raises(FileNotFoundError, match="not-yet"):
        assemble(tmp_path / "repo", [dataclasses.replace(later, optional=False)])


# ------------------------------------------- served, against FlagEmbedding itself

WORDS = "the capital of france is paris and the river runs through the old city".split()
TEXTS = [
    "the capital of france is paris",
    "東京は日本の首都です",                      # CJK
    "مرحبا بالعالم",                            # Arabic
    "Привет мир, как дела?",                    # Cyrillic
    "naïve café résumé à la crème brûlée",      # accents
    "😀🎉 emoji 👍🏽 and ZWJ 👩‍👩‍👧",              # emoji
    "",                                         # empty
    "   ",                                      # whitespace only
    "the the the the cat cat sat sat sat",      # repeated tokens: the max per id
    "<mask> <unk> literal special tokens",      # <mask> is kept, <unk> dropped
    " ".join(WORDS * 6),                        # past the query length (32), within the document's
    " ".join(WORDS * 50),                       # past the model's 512: truncated
]
LENGTHS = {"query": BGE_M3_QUERY_MAX_LENGTH, "document": 512}
ALL = ("dense", "indices", "values", "tokens", "colbert", "colbert_lengths")


@pytest.fixture(scope="module")
def reference(flag_m3):
    """(text, input_type) -> FlagEmbedding's dense, lexical weights and colbert vectors."""
    cache = {}

    def get(texts, input_type):
        missing = [t for t in dict.fromkeys(texts) if (t, input_type) not in cache]
        if missing:
            out = flag_m3.encode(missing, batch_size=4, max_length=LENGTHS[input_type],
                                 return_dense=True, return_sparse=True, return_colbert_vecs=True)
            for i, text in enumerate(missing):
                cache[text, input_type] = (out["dense_vecs"][i], out["lexical_weights"][i], out["colbert_vecs"][i])
        return [cache[t, input_type] for t in texts]

    return get


def infer(protocol, server, texts, model="bge_m3_colbert", outputs=ALL, parameters=None):
    c = triton.client(protocol, server)
    mod = triton.PROTOCOLS[protocol]
    answer = c.infer(model, [triton.text_input(protocol, texts)],
                     outputs=[mod.InferRequestedOutput(n) for n in outputs], parameters=parameters)
    return {n: answer.as_numpy(n) for n in outputs}


def assert_like_flagembedding(got, want, tokens=None):
    """Served outputs of a request vs FlagEmbedding's, text by text."""
    for r, (dense, lexical, colbert) in enumerate(want):
        np.testing.assert_allclose(got["dense"][r], dense, rtol=0, atol=1e-5)
        idx, val = got["indices"][r], got["values"][r]
        kept = idx >= 0
        served = {str(int(i)): float(v) for i, v in zip(idx[kept], val[kept])}
        assert served.keys() == lexical.keys(), r
        for key, weight in lexical.items():
            assert abs(served[key] - float(weight)) <= 1e-5, (r, key)
        assert (val[~kept] == 0).all() and (np.diff(val[kept]) <= 0).all()
        if tokens is not None:
            assert list(got["tokens"][r][kept]) == [tokens[int(i)] for i in idx[kept]]
            assert (got["tokens"][r][~kept] == b"").all()
        if "colbert" in got:
            length = int(got["colbert_lengths"].reshape(-1)[r])
            assert length == colbert.shape[0], r
            np.testing.assert_allclose(got["colbert"][r, :length], colbert, rtol=0, atol=1e-5)
            assert (got["colbert"][r, length:] == 0).all()


@pytest.fixture(scope="module")
def vocabulary():
    from tokenizers import Tokenizer

    vocab = Tokenizer.from_file(str(BGE_M3_TINY / "tokenizer.json")).get_vocab(with_added_tokens=True)
    return {i: term.encode() for term, i in vocab.items()}


@pytest.fixture(params=["http", "grpc"])
def protocol(request):
    return request.param


@pytest.mark.parametrize("input_type", ["document", "query", "passage"])
def test_batched_and_alone_equal_flagembedding(protocol, bge_m3_server, reference, vocabulary, input_type):
    kind = "document" if input_type == "passage" else input_type
    want = reference(TEXTS, kind)
    params = {"input_type": input_type}
    batched = infer(protocol, bge_m3_server, TEXTS, parameters=params)
    assert batched["colbert"].shape[:2] == (len(TEXTS), max(w[2].shape[0] for w in want))
    assert batched["colbert_lengths"].dtype == np.int32 and batched["indices"].dtype == np.int32
    assert_like_flagembedding(batched, want, vocabulary)
    for text, one in zip(TEXTS, want):
        alone = infer(protocol, bge_m3_server, [text], model="bge_m3", outputs=ALL[:4], parameters=params)
        assert_like_flagembedding(alone, [one], vocabulary)


def test_the_default_input_type_is_document_and_lengths_differ(protocol, bge_m3_server):
    from tokenizers import Tokenizer

    long_text = TEXTS[-2]
    tokens = len(Tokenizer.from_file(str(BGE_M3_TINY / "tokenizer.json")).encode(long_text).ids)
    assert BGE_M3_QUERY_MAX_LENGTH < tokens < 512
    default = infer(protocol, bge_m3_server, [long_text])
    query = infer(protocol, bge_m3_server, [long_text], parameters={"input_type": "query"})
    assert int(default["colbert_lengths"].reshape(-1)[0]) == tokens - 1  # every token after <s>, </s> included
    assert int(query["colbert_lengths"].reshape(-1)[0]) == BGE_M3_QUERY_MAX_LENGTH - 1
    assert int(infer(protocol, bge_m3_server, [TEXTS[-1]])["colbert_lengths"].reshape(-1)[0]) == 511


def test_only_the_asked_outputs_and_the_plain_ensemble_has_no_colbert(protocol, bge_m3_server, reference):
    want = reference(TEXTS[:3], "document")
    dense = infer(protocol, bge_m3_server, TEXTS[:3], model="bge_m3", outputs=("dense",))
    np.testing.assert_allclose(dense["dense"], np.stack([w[0] for w in want]), rtol=0, atol=1e-5)
    colbert = infer(protocol, bge_m3_server, TEXTS[:3], outputs=("colbert", "colbert_lengths"))
    assert colbert["colbert"].shape[0] == 3
    e = triton.error_of(lambda: infer(protocol, bge_m3_server, TEXTS[:1], model="bge_m3", outputs=("colbert",)))
    assert "unexpected inference output 'colbert' for model 'bge_m3'" in e.message(), e.message()


def test_top_k_and_min_weight(protocol, bge_m3_server):
    full = infer(protocol, bge_m3_server, TEXTS, model="bge_m3", outputs=("indices", "values"))
    top = infer(protocol, bge_m3_server, TEXTS, model="bge_m3", outputs=("indices", "values"), parameters={"top_k": 3})
    width = min(3, full["indices"].shape[1])
    np.testing.assert_array_equal(top["indices"], full["indices"][:, :width])
    np.testing.assert_array_equal(top["values"], full["values"][:, :width])
    threshold = float(np.median(full["values"][full["values"] > 0]))
    heavy = infer(protocol, bge_m3_server, TEXTS, model="bge_m3", outputs=("indices", "values"),
                  parameters={"min_weight": threshold})
    for r in range(len(TEXTS)):
        kept = full["values"][r] >= threshold
        n = int(kept.sum())
        np.testing.assert_array_equal(heavy["indices"][r, :n], full["indices"][r][kept])
        assert (heavy["indices"][r, n:] == -1).all()


def test_concurrent_requests_of_mixed_lengths_and_types(protocol, bge_m3_server, reference):
    rng = np.random.default_rng(7)
    jobs = []
    for k in range(32):
        texts = [TEXTS[i] for i in rng.choice(len(TEXTS), size=int(rng.integers(1, 5)))]
        jobs.append((texts, ["query", "document", "passage"][k % 3]))

    def run(job):
        texts, input_type = job
        return infer(protocol, bge_m3_server, texts, parameters={"input_type": input_type})

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(run, jobs))
    for (texts, input_type), got in zip(jobs, results):
        assert_like_flagembedding(got, reference(texts, "document" if input_type == "passage" else input_type))


BAD = {
    "not utf-8": ([b"ok", b"caf\xe9 au lait"], None, "text 1 is not valid UTF-8"),
    "too long": (["fine", "x" * 65537], None, "text 1 is 65537 bytes; the limit is 65536 bytes (max_text_bytes)"),
    "bad top_k": (["fine"], {"top_k": -3}, "top_k must be an integer between 0 and"),
    "fractional top_k": (["fine"], {"top_k": 2.5}, "top_k must be an integer"),
    "bad min_weight": (["fine"], {"min_weight": float("nan")}, "min_weight must be a finite number >= 0"),
    "bad input_type": (["fine"], {"input_type": "doc"}, "input_type must be 'query' or 'document'"),
    "misspelt input_type": (["fine"], {"input-type": "query"}, "did you mean input_type?"),
}


@pytest.mark.parametrize("kind", list(BAD))
def test_bad_input_gets_its_own_invalid_arg_and_others_are_answered(protocol, bge_m3_server, reference, kind):
    """Each bad request its own message, concurrent good ones answered. That a bad one fails
    alone in an execution it shares with good ones: tests/test_batch_isolation.py."""
    texts, params, message = BAD[kind]
    good = TEXTS[:4]

    def bad():
        return triton.error_of(lambda: infer(protocol, bge_m3_server, texts, parameters=params))

    with ThreadPoolExecutor(8) as pool:
        errors = [pool.submit(bad) for _ in range(4)]
        answers = [pool.submit(infer, protocol, bge_m3_server, good) for _ in range(4)]
        for e in errors:
            e = e.result()
            assert triton.is_invalid_arg(e), e
            assert message in e.message(), e.message()
        for answer in answers:
            assert_like_flagembedding(answer.result(), reference(good, "document"))
    c = triton.client(protocol, bge_m3_server)
    assert c.is_server_ready() and c.is_model_ready("bge_m3") and c.is_model_ready("bge_m3_colbert")


def test_the_tokenizer_refuses_to_load_a_length_beyond_the_models(tmp_path):
    """A hand-edited config (the assembly refuses such a spec) fails the load, naming the limit."""
    from tests.conftest import load_failure

    repository = assemble(tmp_path / "model_repository", [bge_m3_pipeline()])
    config = repository / "bge_m3_tokenizer" / "config.pbtxt"
    config.write_text(config.read_text().replace('string_value: "512"', 'string_value: "1024"'))
    message = "is beyond what the model serves: 512 tokens"
    assert message in load_failure(repository, tmp_path / "server.log", message)
