"""The bge_m3 pipeline: serving math on synthetic arrays, the assembly's checks, and
fidelity to FlagEmbedding's BGEM3FlagModel over HTTP and gRPC from a real tritonserver."""

from __future__ import annotations

import dataclasses
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from splade_triton.artifacts.repository import Pipeline, assemble, pipeline_configs, skipped
from splade_triton.serving.bge_m3 import lexical_weights, parse_input_type, read_export_info
from splade_triton.serving.encoding import RaggedEncoder

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
    assert parse_input_type(params) == want


@pytest.mark.parametrize("params,message", [
    ('{"input_type": "doc"}', "input_type must be 'query' or 'document'"),
    ('{"input_type": 1}', "got 1"),
    ('{"input-type": "query"}', "unknown request parameter(s): input-type (did you mean input_type?)"),
    ('{"inputType": "query"}', "did you mean input_type?"),
])
def test_bad_input_type(params, message):
    with pytest.raises(ValueError) as info:
        parse_input_type(params)
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
