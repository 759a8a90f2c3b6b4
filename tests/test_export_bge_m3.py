"""BGE-M3 export: the tiny fixture in the published layout exports and matches FlagEmbedding, the
graph's interface is what serving codes against, and checkpoints that cannot be BGE-M3 are refused."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from splade_triton.artifacts import bge_m3
from splade_triton.artifacts.files import file_sha256
from splade_triton.artifacts.reference import CheckpointError
from tests.conftest import MODEL_DIR, ROOT

torch = pytest.importorskip("torch")

EXPORTED = ["export_info.json", "model.onnx", "tokenizer.json", "tokenizer_config.json"]


def run_export(model: Path, output: Path, *extra):
    return subprocess.run(
        [sys.executable, "-m", "export.export_onnx", "--model", str(model), "--output", str(output), *map(str, extra)],
        capture_output=True, text=True, cwd=ROOT, timeout=600,
    )


def leftovers(output: Path) -> list[str]:
    return sorted(p.name for p in output.parent.iterdir() if p.name.startswith(f".{output.name}"))


@pytest.fixture(scope="module")
def fixture_dir(tmp_path_factory) -> Path:
    return bge_m3.build_fixture(tmp_path_factory.mktemp("bge") / "bge-m3-tiny-src", hidden=32, layers=2, heads=2)


@pytest.fixture(scope="module")
def exported(fixture_dir, tmp_path_factory):
    output = tmp_path_factory.mktemp("bge-export") / "bge-m3-tiny"
    result = run_export(fixture_dir, output)
    assert result.returncode == 0, result.stderr[-3000:]
    return output, result.stdout


def copy_of(fixture_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(fixture_dir, tmp_path / "model"))


def test_fixture_has_the_published_layout(fixture_dir):
    from transformers import AutoTokenizer

    assert {"config.json", "model.safetensors", "sparse_linear.pt", "colbert_linear.pt", "tokenizer.json",
            "tokenizer_config.json"} <= {p.name for p in fixture_dir.iterdir()}
    for name in bge_m3.HEAD_FILES:
        assert {v.dtype for v in torch.load(fixture_dir / name).values()} == {torch.float16}
    tokenizer = AutoTokenizer.from_pretrained(fixture_dir)
    assert bge_m3.special_ids(tokenizer) == {"cls": 0, "eos": 2, "pad": 1, "unk": 3}
    assert tokenizer.mask_token_id == len(tokenizer) - 1
    assert tokenizer("")["input_ids"] == [0, 2]
    # Several scripts have their own pieces, not <unk>.
    for text in ("Москва", "東京", "القاهرة", "café", "🍕"):
        assert 3 not in tokenizer(text)["input_ids"][1:-1], text


def test_export_validates_against_flagembedding(exported):
    output, stdout = exported
    for what in ("the graph on onnxruntime", "the graph on openvino", "a 512-token document on openvino"):
        assert f"validation of {what} against FlagEmbedding on" in stdout
    assert sorted(p.name for p in output.iterdir()) == EXPORTED
    assert leftovers(output) == []
    info = json.loads((output / "export_info.json").read_text())
    assert info["kind"] == "bge_m3"
    assert (info["hidden_size"], info["max_position_embeddings"], info["max_length"]) == (32, 514, 512)
    assert info["special_ids"] == {"cls": 0, "eos": 2, "pad": 1, "unk": 3}
    assert info["vocab_size"] == info["tokenizer_vocab_size"] > 100
    assert info["outputs"] == ["dense", "token_weights", "colbert"]
    assert info["external_data"] is False
    assert info["onnx_sha256"] == file_sha256(output / "model.onnx")
    report = info["validation"]
    assert report["texts"] == len(bge_m3.VALIDATION_TEXTS) and report["truncated_texts"] >= 1
    for key in ("dense_max_abs_diff", "colbert_max_abs_diff", "lexical_max_abs_diff"):
        assert report[key] <= 1e-5
    assert report["lexical_key_mismatches"] == 0 and report["padding_nonzero"] == 0
    assert report["lexical_terms"] > 50  # the comparison is not between empty dicts
    # The same on OpenVINO (the served runtime), and one document of the model's whole length there.
    assert info["opset"] == bge_m3.OPSET == 23
    for key in ("dense_max_abs_diff", "colbert_max_abs_diff", "lexical_max_abs_diff"):
        assert report["openvino"][key] <= 1e-5 and report["long_document"][key] <= 1e-5
    assert report["openvino"]["texts"] == report["texts"] and report["openvino"]["lexical_terms"] == report["lexical_terms"]
    long = report["long_document"]
    assert (long["texts"], long["truncated_texts"], long["max_length"]) == (1, 1, 512)
    assert long["lexical_terms"] > 50 and long["lexical_key_mismatches"] == 0


def test_graph_interface(exported):
    """What the serving side codes against: names, dtypes, shapes, zeros at padding."""
    from transformers import AutoTokenizer

    output, _ = exported
    session = ort.InferenceSession(str(output / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [(i.name, i.type) for i in session.get_inputs()] == [("input_ids", "tensor(int64)"),
                                                                 ("attention_mask", "tensor(int64)")]
    assert [(o.name, o.type) for o in session.get_outputs()] == [("dense", "tensor(float)"),
                                                                  ("token_weights", "tensor(float)"),
                                                                  ("colbert", "tensor(float)")]
    tokenizer = AutoTokenizer.from_pretrained(output)
    texts = ["", "Москва — столица России", "東京 東京 東京 " * 20]
    enc = tokenizer(texts, padding=True, return_tensors="np")
    dense, weights, colbert = session.run(None, {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]})
    batch, seq = enc["input_ids"].shape
    assert dense.shape == (batch, 32) and weights.shape == (batch, seq) and colbert.shape == (batch, seq - 1, 32)
    np.testing.assert_allclose(np.linalg.norm(dense, axis=-1), 1, atol=1e-6)
    mask = enc["attention_mask"]
    assert not weights[mask == 0].any() and (weights >= 0).all()
    assert not colbert[mask[:, 1:] == 0].any()
    np.testing.assert_allclose(np.linalg.norm(colbert[mask[:, 1:] == 1], axis=-1), 1, atol=1e-6)
    # Each text alone gives what it gave in the padded batch.
    for i, text in enumerate(texts):
        one = tokenizer([text], return_tensors="np")
        n = one["input_ids"].shape[1]
        d, w, c = session.run(None, {"input_ids": one["input_ids"], "attention_mask": one["attention_mask"]})
        assert np.abs(d[0] - dense[i]).max() <= 1e-5
        assert np.abs(w[0] - weights[i, :n]).max() <= 1e-5
        assert np.abs(c[0] - colbert[i, : n - 1]).max() <= 1e-5


def test_lexical_dicts_are_flagembeddings_form():
    ids = np.array([[0, 7, 5, 7, 3, 9, 2, 1], [0, 813, 2, 1, 1, 1, 1, 1]])
    weights = np.array([[0.9, 0.2, 0.0, 0.5, 0.7, 0.3, 0.8, 0.0], [0.4, 0.6, 0.1, 0, 0, 0, 0, 0]], dtype=np.float32)
    specials = {"cls": 0, "eos": 2, "pad": 1, "unk": 3}
    assert bge_m3.lexical_dicts(ids, weights, specials) == [{"7": pytest.approx(0.5), "9": pytest.approx(0.3)},
                                                           {"813": pytest.approx(0.6)}]


def test_a_failed_validation_writes_nothing(fixture_dir, tmp_path):
    output = tmp_path / "out"
    result = run_export(fixture_dir, output, "--tolerance", "0")
    assert result.returncode != 0
    assert "does not match FlagEmbedding: max abs diff" in result.stderr
    assert "Traceback" not in result.stderr
    assert not output.exists() and leftovers(output) == []


def test_external_data_when_forced(fixture_dir, exported, tmp_path):
    output = tmp_path / "external"
    result = run_export(fixture_dir, output, "--external-data", "always")
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in output.iterdir()) == sorted([*EXPORTED, "model.onnx.data"])
    info = json.loads((output / "export_info.json").read_text())
    assert info["external_data"] is True
    assert info["onnx_data_sha256"] == file_sha256(output / "model.onnx.data")
    # The weights are in the data file, and the graph reads them from beside itself.
    import onnx

    graph = onnx.load(str(output / "model.onnx"), load_external_data=False).graph
    big = [t for t in graph.initializer if np.prod(t.dims) >= 1024]
    assert big and all(t.data_location == onnx.TensorProto.EXTERNAL for t in big)
    assert (output / "model.onnx.data").stat().st_size >= sum(4 * int(np.prod(t.dims)) for t in big)
    feeds = {"input_ids": np.array([[0, 10, 20, 30, 2]]), "attention_mask": np.ones((1, 5), dtype=np.int64)}
    inline = ort.InferenceSession(str(exported[0] / "model.onnx"), providers=["CPUExecutionProvider"]).run(None, feeds)
    external = ort.InferenceSession(str(output / "model.onnx"), providers=["CPUExecutionProvider"]).run(None, feeds)
    for a, b in zip(inline, external):
        np.testing.assert_array_equal(a, b)


def test_layout_detection(fixture_dir, tmp_path):
    assert bge_m3.is_layout(fixture_dir)
    assert not bge_m3.is_layout(MODEL_DIR)  # a SPLADE masked LM
    model = copy_of(fixture_dir, tmp_path)
    (model / "sparse_linear.pt").unlink()
    assert bge_m3.is_layout(model)  # colbert_linear.pt alone: BGE-M3, refused below


@pytest.mark.parametrize("missing", bge_m3.HEAD_FILES)
def test_a_missing_head_is_refused(fixture_dir, tmp_path, missing):
    model = copy_of(fixture_dir, tmp_path)
    (model / missing).unlink()
    output = tmp_path / "out"
    result = run_export(model, output)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    message = result.stderr.strip().splitlines()[-1]
    assert f"is missing {missing}" in message
    assert not output.exists()


def test_a_head_of_the_wrong_shape_is_refused(fixture_dir, tmp_path):
    model = copy_of(fixture_dir, tmp_path)
    torch.save({k: v.half() for k, v in torch.nn.Linear(32, 2).state_dict().items()}, model / "sparse_linear.pt")
    with pytest.raises(CheckpointError, match=r"sparse_linear.pt does not fit this model: expected the state dict "
                                              r"of Linear\(32, 1\) \(weight \[1, 32\], bias \[1\]\), got weight \[2, 32\]"):
        bge_m3.load(model)
    shutil.copyfile(fixture_dir / "sparse_linear.pt", model / "sparse_linear.pt")
    torch.save({"weight": torch.zeros(16, 32, dtype=torch.float16)}, model / "colbert_linear.pt")
    with pytest.raises(CheckpointError, match=r"colbert_linear.pt does not fit .* got weight \[16, 32\]$"):
        bge_m3.load(model)


def test_an_unreadable_head_is_refused(fixture_dir, tmp_path):
    model = copy_of(fixture_dir, tmp_path)
    (model / "colbert_linear.pt").write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="colbert_linear.pt cannot be read as a state dict"):
        bge_m3.load(model)


def test_missing_encoder_weights_are_refused_but_not_the_pooler(fixture_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    model = copy_of(fixture_dir, tmp_path)
    tensors = load_file(model / "model.safetensors")
    # The fixture has no pooler (BGE-M3 does not use it) and loads: checked by the export above.
    assert not any(k.startswith("pooler.") for k in tensors)
    del tensors["encoder.layer.1.output.dense.weight"]
    save_file(tensors, model / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"lacks trained encoder weights: missing encoder.layer.1.output.dense.weight"):
        bge_m3.load(model)
