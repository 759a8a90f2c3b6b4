"""python -m export.export_onnx: the fused graph matches the reference, the exported
model directory is written whole or not at all, and checkpoints that cannot be a
trained SPLADE model are refused."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from splade_triton.artifacts.onnx_graph import EXPORTED_FILES
from splade_triton.artifacts.texts import VARIED_TEXTS
from splade_triton.serving.splade import activate
from tests.conftest import MODEL_DIR, ROOT

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def run_export(output: Path, *extra, model: Path = MODEL_DIR):
    return subprocess.run(
        [sys.executable, "-m", "export.export_onnx", "--model", str(model), "--output", str(output), *map(str, extra)],
        capture_output=True, text=True, cwd=ROOT, timeout=600,
    )


def leftovers(output: Path) -> list[str]:
    """Staging or old copies an export left beside its output."""
    return sorted(p.name for p in output.parent.iterdir() if p.name.startswith(f".{output.name}"))


def tiny_checkpoint(path: Path, masked_lm: bool, vocab_size: int = 30522, **config) -> Path:
    """A 1-layer BERT with random weights and the default model's tokenizer."""
    from transformers import BertConfig, BertForMaskedLM, BertModel

    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    settings = dict(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                    intermediate_size=64, max_position_embeddings=512)
    model = (BertForMaskedLM if masked_lm else BertModel)(BertConfig(**settings, **config))
    model.save_pretrained(path)
    for name in TOKENIZER_FILES:
        shutil.copyfile(MODEL_DIR / name, path / name)
    return path


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    output = tmp_path_factory.mktemp("export") / "splade-tiny"
    result = run_export(output)
    assert result.returncode == 0, result.stderr[-3000:]
    return output, result.stdout


def test_export_writes_the_exported_model_directory(exported):
    output, stdout = exported
    assert "max abs diff" in stdout
    assert sorted(p.name for p in output.iterdir()) == sorted(EXPORTED_FILES)
    info = json.loads((output / "export_info.json").read_text())
    assert info["validation"]["max_abs_diff"] <= 1e-4 and info["validation"]["nonzero_mismatches"] == 0
    assert info["vocab_size"] == info["tokenizer_vocab_size"] == 30522
    assert leftovers(output) == []


def test_fused_graph_matches_reference_in_padded_batches(exported, reference_model, reference_encode):
    output, _ = exported
    session = ort.InferenceSession(str(output / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask"]
    assert [o.name for o in session.get_outputs()] == ["pooled_logits"]
    tokenizer = reference_model[0]
    # One padded batch of everything: short texts sit beside a 512-token one.
    enc = tokenizer(VARIED_TEXTS, padding=True, truncation=True, max_length=512, return_tensors="np")
    pooled = session.run(None, {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]})[0]
    got, expected = activate(pooled), reference_encode(VARIED_TEXTS)
    assert np.abs(got - expected).max() <= 1e-4
    np.testing.assert_array_equal(got > 0, expected > 0)


def test_a_failed_export_leaves_nothing_half_written(tmp_path):
    fresh = tmp_path / "fresh"
    result = run_export(fresh, "--tolerance", "0")
    assert result.returncode != 0
    assert "does not match the reference: max abs diff" in result.stderr
    assert "Traceback" not in result.stderr
    assert not fresh.exists() and leftovers(fresh) == []

    # A previous export stays as it was, whole.
    previous = tmp_path / "previous"
    previous.mkdir()
    for name in EXPORTED_FILES:
        (previous / name).write_text(f"previous {name}")
    result = run_export(previous, "--tolerance", "0")
    assert result.returncode != 0
    assert {p.name: p.read_text() for p in previous.iterdir()} == {n: f"previous {n}" for n in EXPORTED_FILES}
    assert leftovers(previous) == []


def test_an_encoder_only_checkpoint_is_refused(tmp_path):
    """transformers would initialise the missing masked-LM head randomly, and
    the validation would pass against that same random head."""
    model = tiny_checkpoint(tmp_path / "encoder-only", masked_lm=False)
    output = tmp_path / "out"
    result = run_export(output, model=model)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    message = result.stderr.strip().splitlines()[-1]
    assert "masked-LM head" in message
    for weight in ("cls.predictions.bias", "cls.predictions.transform.dense.weight"):
        assert weight in message
    # Tied to the word embeddings, which the checkpoint has: not reported.
    assert "cls.predictions.decoder.weight" not in message
    assert not output.exists() and leftovers(output) == []


def test_without_tied_embeddings_the_decoder_weight_is_required_too(tmp_path):
    model = tiny_checkpoint(tmp_path / "encoder-only", masked_lm=False, tie_word_embeddings=False)
    result = run_export(tmp_path / "out", model=model)
    assert result.returncode != 0
    assert "cls.predictions.decoder.weight" in result.stderr


def test_a_tokenizer_larger_than_the_model_is_refused(tmp_path):
    model = tiny_checkpoint(tmp_path / "small-vocab", masked_lm=True, vocab_size=1000)
    result = run_export(tmp_path / "out", model=model)
    assert result.returncode != 0
    assert "the tokenizer has 30522 tokens but the model's masked-LM output has 1000" in result.stderr
    assert not (tmp_path / "out").exists()


def test_a_padded_model_vocabulary_is_exported_and_recorded(tmp_path):
    model = tiny_checkpoint(tmp_path / "padded", masked_lm=True, vocab_size=30528)
    output = tmp_path / "out"
    result = run_export(output, model=model)
    assert result.returncode == 0, result.stderr[-3000:]
    info = json.loads((output / "export_info.json").read_text())
    assert (info["vocab_size"], info["tokenizer_vocab_size"]) == (30528, 30522)
    assert "padded beyond the tokenizer's 30522" in result.stdout
