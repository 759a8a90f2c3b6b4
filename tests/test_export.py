"""export/export_onnx.py: the fused graph matches the reference and installs itself."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest

from splade_triton.serving.splade import activate
from splade_triton.artifacts.texts import VARIED_TEXTS
from tests.conftest import MODEL_DIR, REPOSITORY, ROOT


def run_export(repository, *extra):
    return subprocess.run(
        [sys.executable, str(ROOT / "export" / "export_onnx.py"), "--model", str(MODEL_DIR), "--repository", str(repository), *extra],
        capture_output=True, text=True, cwd=ROOT,
    )


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    repository = tmp_path_factory.mktemp("repo") / "model_repository"
    shutil.copytree(REPOSITORY, repository, ignore=shutil.ignore_patterns("*.onnx", "tokenizer*.json", "export_info.json"))
    result = run_export(repository)
    assert result.returncode == 0, result.stderr[-3000:]
    return repository, result.stdout


def test_export_installs_the_model_and_tokenizer(exported):
    repository, stdout = exported
    assert "max abs diff" in stdout
    for path in ("encoder/1/model.onnx", "tokenizer/1/tokenizer.json", "sparsify/1/tokenizer.json"):
        assert (repository / path).is_file(), path
    info = json.loads((repository / "encoder/1/export_info.json").read_text())
    assert info["validation"]["max_abs_diff"] <= 1e-4 and info["validation"]["nonzero_mismatches"] == 0


def test_fused_graph_matches_reference_in_padded_batches(exported, reference_model, reference_encode):
    repository, _ = exported
    session = ort.InferenceSession(str(repository / "encoder/1/model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask"]
    assert [o.name for o in session.get_outputs()] == ["pooled_logits"]
    tokenizer = reference_model[0]
    # One padded batch of everything: short texts sit beside a 512-token one.
    enc = tokenizer(VARIED_TEXTS, padding=True, truncation=True, max_length=512, return_tensors="np")
    pooled = session.run(None, {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]})[0]
    got, expected = activate(pooled), reference_encode(VARIED_TEXTS)
    assert np.abs(got - expected).max() <= 1e-4
    np.testing.assert_array_equal(got > 0, expected > 0)


def test_export_fails_above_tolerance(tmp_path):
    repository = tmp_path / "model_repository"
    shutil.copytree(REPOSITORY, repository, ignore=shutil.ignore_patterns("*.onnx", "tokenizer*.json", "export_info.json"))
    result = run_export(repository, "--tolerance", "0")
    assert result.returncode != 0
    assert "does not match the reference: max abs diff" in result.stderr
    assert not (repository / "encoder/1/model.onnx").exists()
