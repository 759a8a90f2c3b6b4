"""python -m export.export_onnx on query/document models: OpenSearch's idf.json layout,
sentence-transformers Routers (an inference-free query side, or two encoders), and a
plain SparseEncoder directory. Each side's exported vectors equal sentence-transformers'
SparseEncoder on the same directory; layouts that cannot be served are refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from export import export_onnx
from splade_triton.artifacts import asymmetric
from tests.conftest import ROOT

# script/setup builds and exports these (splade_triton.artifacts.asymmetric fixture).
BUILT = {"opensearch": "splade-opensearch-tiny", "router-static": "splade-router-tiny",
         "router-pair": "splade-pair-tiny"}
STATIC_QUERY = {"encoder": "static", "weights": "query_weights.npy", "special_tokens": False, "max_length": 512}
EXPECTED_SIDES = {
    "opensearch": {"query": STATIC_QUERY,
                   "document": {"encoder": "mlm", "graph": "model.onnx", "activation": "log1p_relu",
                                "special_tokens": True, "max_length": 512}},
    "router-static": {"query": STATIC_QUERY,
                      "document": {"encoder": "mlm", "graph": "model.onnx", "activation": "log1p_log1p_relu",
                                   "special_tokens": True, "max_length": 512}},
    "router-pair": {"query": {"encoder": "mlm", "graph": "query.onnx", "activation": "log1p_relu",
                              "special_tokens": True, "max_length": 64},
                    "document": {"encoder": "mlm", "graph": "model.onnx", "activation": "log1p_relu",
                                 "special_tokens": True, "max_length": 256}},
}
LAYOUT_NAMES = {"opensearch": "opensearch-idf", "router-static": "sentence-transformers-router",
                "router-pair": "sentence-transformers-router"}
# Literal special tokens, repeats, an empty text, and one past every side's length.
TEXTS = ["[CLS] what is [MASK] ? [SEP]", "capital capital of france", "", asymmetric.VALIDATION_TEXTS[19]]


def built(layout: str) -> tuple[Path, Path]:
    """(source, exported) directories of a fixture script/setup built."""
    src, out = ROOT / "build/models" / f"{BUILT[layout]}-src", ROOT / "build/models" / BUILT[layout]
    if not (out / "export_info.json").is_file():
        pytest.fail(f"{out} is not exported: run script/setup")
    return src, out


def refused(model: Path, output: Path) -> str:
    """The export's one-line message for a model it refuses (nothing written)."""
    with pytest.raises(SystemExit) as e:
        export_onnx.main(["--model", str(model), "--output", str(output)])
    assert not output.exists()
    return str(e.value)


def copy_of(layout: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(built(layout)[0], tmp_path / BUILT[layout]))


def sentence_transformers_vectors(layout: str, src: Path, texts) -> dict[str, np.ndarray]:
    """encode_query / encode_document of sentence-transformers' own SparseEncoder, dense."""
    from sentence_transformers import SparseEncoder
    from sentence_transformers.base.modules import Router, Transformer
    from sentence_transformers.sparse_encoder.modules import SparseStaticEmbedding, SpladePooling

    if layout == "opensearch":  # the equivalent model, as its documentation builds it
        document = Transformer(str(src), transformer_task="fill-mask")
        query = SparseStaticEmbedding.from_json(str(src / "idf.json"), tokenizer=document.tokenizer, frozen=True)
        model = SparseEncoder(modules=[Router.for_query_document(
            [query], [document, SpladePooling(activation_function="relu")])], device="cpu")
    else:
        model = SparseEncoder(str(src), device="cpu")
    return {side: encode(texts, convert_to_tensor=True, convert_to_sparse_tensor=False).numpy()
            for side, encode in (("query", model.encode_query), ("document", model.encode_document))}


def served_vectors(out: Path, side: dict, texts) -> np.ndarray:
    """A side's vectors recomputed here from the exported files, one text at a time."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(out))
    rows = []
    for text in texts:
        enc = tokenizer([text], truncation=True, max_length=side["max_length"],
                        add_special_tokens=side["special_tokens"], return_tensors="np")
        if side["encoder"] == "static":
            weights = np.load(out / side["weights"])
            row = np.zeros_like(weights)
            row[np.unique(enc["input_ids"])] = weights[np.unique(enc["input_ids"])]
        else:
            session = ort.InferenceSession(str(out / side["graph"]), providers=["CPUExecutionProvider"])
            logits = session.run(None, {k: enc[k].astype(np.int64) for k in ("input_ids", "attention_mask")})[0][0]
            row = np.log1p(np.maximum(logits, 0))
            if side["activation"] == "log1p_log1p_relu":
                row = np.log1p(row)
        rows.append(row)
    return np.stack(rows)


@pytest.fixture(scope="module")
def fresh_router_static(tmp_path_factory):
    """The router-static fixture built and exported here, by the command's own entry point."""
    tmp = tmp_path_factory.mktemp("router-static")
    src = asymmetric.build_fixture("router-static", tmp / "src", tokenizer_dir=ROOT / "models/splade-tiny")
    export_onnx.main(["--model", str(src), "--output", str(tmp / "out")])
    return src, tmp / "out"


def test_router_static_exports_and_validates(fresh_router_static):
    src, out = fresh_router_static
    assert sorted(p.name for p in out.iterdir()) == ["export_info.json", "model.onnx", "query_weights.npy",
                                                     "tokenizer.json", "tokenizer_config.json"]
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".out")]  # nothing staged left
    info = json.loads((out / "export_info.json").read_text())
    assert info["kind"] == "splade" and info["layout"] == "sentence-transformers-router"
    assert info["sides"] == EXPECTED_SIDES["router-static"]
    assert info["vocab_size"] == info["tokenizer_vocab_size"] == 30522
    weights = np.load(out / "query_weights.npy")
    assert weights.dtype == np.float32 and weights.shape == (30522,) and (weights > 0).sum() > 30000
    validation = info["validation"]
    assert "sentence-transformers" in validation["reference"] and validation["texts"] == 24
    for side in ("query", "document"):
        assert validation[side]["max_abs_diff"] <= 1e-4 and validation[side]["nonzero_mismatches"] == 0
        assert validation[side]["nonzero_terms"] > 100
    assert validation["document"]["truncated_texts"] >= 1


@pytest.mark.parametrize("layout", list(BUILT))
def test_each_layout_exported_with_its_sides(layout):
    _, out = built(layout)
    info = json.loads((out / "export_info.json").read_text())
    assert info["layout"] == LAYOUT_NAMES[layout]
    assert info["sides"] == EXPECTED_SIDES[layout]
    for side in EXPECTED_SIDES[layout].values():
        assert (out / side.get("graph", side.get("weights", ""))).is_file()
    assert (out / "query.onnx").exists() == (layout == "router-pair")
    assert (out / "query_weights.npy").exists() == (layout != "router-pair")
    for side in ("query", "document"):
        figures = info["validation"][side]
        assert figures["max_abs_diff"] <= 1e-4 and figures["nonzero_mismatches"] == 0 and figures["nonzero_terms"]
    if layout == "opensearch":
        assert info["idf_tokens_not_in_vocabulary"] == 0 and info["idf_tokens"] == 30522


@pytest.mark.parametrize("layout", list(BUILT))
def test_exported_vectors_equal_sentence_transformers(layout):
    src, out = built(layout)
    sides = json.loads((out / "export_info.json").read_text())["sides"]
    expected = sentence_transformers_vectors(layout, src, TEXTS)
    for name, side in sides.items():
        got = served_vectors(out, side, TEXTS)
        assert np.abs(got - expected[name]).max() <= 1e-4, name
        np.testing.assert_array_equal(got != 0, expected[name] != 0)
        assert (got != 0).sum(axis=1)[0] > 0  # "[CLS] what is [MASK]": terms on every side
    # The query side is not the document side: the routing reached two encoders.
    assert not np.allclose(expected["query"], expected["document"])


def test_a_plain_sparse_encoder_directory_is_one_encoder_for_both_sides(tmp_path):
    from sentence_transformers import SparseEncoder
    from sentence_transformers.base.modules import Transformer
    from sentence_transformers.sparse_encoder.modules import SpladePooling

    mlm = asymmetric.random_mlm(tmp_path / "mlm", ROOT / "models/splade-tiny", seed=3)
    SparseEncoder(modules=[Transformer(str(mlm), transformer_task="fill-mask", max_seq_length=128),
                           SpladePooling(activation_function="log1p_relu")]).save(str(tmp_path / "st"))
    layout = asymmetric.inspect(tmp_path / "st")
    assert layout.kind == "sentence-transformers" and not layout.pair
    assert layout.query is layout.document
    assert (layout.document.encoder, layout.document.activation, layout.document.max_length) == \
        ("mlm", "log1p_log1p_relu", 128)


def test_idf_weights_are_built_as_sentence_transformers_builds_them(tmp_path):
    """Absent tokens weigh 0; an unknown token's weight lands on [UNK], the last one read winning."""
    from sentence_transformers.sparse_encoder.modules import SparseStaticEmbedding
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(ROOT / "models/splade-tiny"))
    idf = {"paris": 3.5, "[UNK]": 1.0, "notawordpiece##": 7.0, "capital": 2.25, "zzzunseen": 9.0}
    path = tmp_path / "idf.json"
    path.write_text(json.dumps(idf))
    weights, unknown = asymmetric.idf_weights(idf, tokenizer, path)
    expected = SparseStaticEmbedding.from_json(str(path), tokenizer=tokenizer).weight.detach().numpy()
    np.testing.assert_array_equal(weights, expected)
    assert unknown == ["notawordpiece##", "zzzunseen"] and weights[tokenizer.unk_token_id] == 9.0


def test_sides_with_different_tokenizers_are_refused(tmp_path):
    from transformers import AutoTokenizer

    src = copy_of("router-static", tmp_path)
    query_dir = src / "query_0_SparseStaticEmbedding"
    tokenizer = AutoTokenizer.from_pretrained(str(query_dir))
    tokenizer.add_tokens(["inferencefreetoken"])
    tokenizer.save_pretrained(str(query_dir))
    message = refused(src, tmp_path / "out")
    assert "tokenize with different vocabularies" in message
    assert str(query_dir) in message and str(src / "document_0_Transformer") in message


def test_sum_pooling_is_refused(tmp_path):
    src = copy_of("router-static", tmp_path)
    config_path = src / "document_1_SpladePooling" / "config.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), "pooling_strategy": "sum"}))
    message = refused(src, tmp_path / "out")
    assert f"{config_path}: pooling_strategy 'sum' is not served" in message


@pytest.mark.parametrize("type_ref, words", [
    ("sentence_transformers.sparse_encoder.modules.SparseAutoEncoder", "unsupported module SparseAutoEncoder"),
    ("my_package.CustomPooling", "not a sentence-transformers module"),
])
def test_an_unknown_module_is_refused(tmp_path, type_ref, words):
    src = copy_of("router-static", tmp_path)
    config_path = src / "router_config.json"
    config = json.loads(config_path.read_text())
    config["types"]["document_1_SpladePooling"] = type_ref
    config_path.write_text(json.dumps(config))
    message = refused(src, tmp_path / "out")
    assert str(config_path) in message and words in message


def test_idf_json_without_a_tokenizer_is_refused(tmp_path):
    src = copy_of("opensearch", tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (src / name).unlink()
    message = refused(src, tmp_path / "out")
    assert f"{src} has idf.json but no tokenizer" in message


def test_idf_json_beside_an_encoder_only_checkpoint_is_refused(tmp_path):
    """The masked-LM head must be trained weights (reference.load's check), not transformers' random ones."""
    from transformers import BertConfig, BertModel

    src = copy_of("opensearch", tmp_path)
    (src / "model.safetensors").unlink()
    config = BertConfig.from_pretrained(str(src))
    BertModel(config, add_pooling_layer=False).save_pretrained(str(src))
    message = refused(src, tmp_path / "out")
    assert "masked-LM head" in message and "cls.predictions.bias" in message
