"""Settings mean what they say: one length per side everywhere, the served fidelity gate."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from google.protobuf import text_format

from splade_triton.artifacts.gpu_pipeline import GpuPipeline
from splade_triton.artifacts.repository import Pipeline, assemble, pipeline_configs
from splade_triton.artifacts.shapes import read_config
from splade_triton.serving.runtime import ISA_FLAGS, cpu_flags
from tests import triton
from tests.conftest import ROOT, load_failure, running

MODELS = ROOT / "build" / "models"
PAIR = MODELS / "splade-pair-tiny"  # export_info.json sides: query 64, document 256 tokens
SPLADE_TINY = MODELS / "splade-tiny"
LONG = "word " * 400  # 400 words: beyond every length here


def exported(folder: Path) -> Path:
    if not (folder / "export_info.json").is_file():
        pytest.fail(f"{folder.name} is not exported: run script/setup")
    return folder


# ------------------------------------------------------------------ lengths


def test_the_length_of_a_side_has_one_order_of_precedence():
    from splade_triton.serving.sides import effective_length

    info = {"max_length": 300, "sides": {"query": {"max_length": 64}, "document": {"max_length": 256}}}
    assert effective_length("document", {}, None) == 512  # nothing set anywhere: the default
    assert effective_length("document", {}, info) == 256  # the export's length of the side
    assert effective_length("document", {}, {"max_length": 128}) == 128  # the default lowered to the positions
    assert effective_length("document", {}, {"max_length": 300}, default=8192) == 300
    assert effective_length("document", {"max_length": 64}, info) == 64  # an explicit max_length beats the export's
    assert effective_length("query", {"max_length": 128}, info) == 128
    assert effective_length("query", {"max_length": 128, "query_max_length": 16}, info) == 16  # the side's own first
    assert effective_length("document", {"max_length": 128, "query_max_length": 16}, info) == 128
    assert effective_length("document", {"max_length": None}, info) == 256  # None: not set
    with pytest.raises(ValueError, match=r"^document_max_length = 301 is beyond what the model serves: 300 tokens"):
        effective_length("document", {"document_max_length": 301}, info)
    with pytest.raises(ValueError, match=r"^max_length = 1000 is beyond"):
        effective_length("query", {"max_length": 1000}, info)


def _lengths(pipeline: Pipeline, device: str = "cpu") -> tuple[str, str]:
    parameters = pipeline_configs(pipeline, device)["tokenizer"].parameters
    return parameters["query_max_length"].string_value, parameters["document_max_length"].string_value


def test_the_assembly_writes_each_sides_length_into_the_served_config():
    pair = Pipeline("pair", "splade", exported(PAIR))
    assert _lengths(pair) == ("64", "256")  # the export's sides, not the template's 512
    assert _lengths(pair.with_step("tokenizer", {"max_length": 64})) == ("64", "64")
    assert _lengths(pair.with_step("tokenizer", {"max_length": 128, "query_max_length": 16})) == ("16", "128")
    # A config text setting it is the spec's setting too.
    assert _lengths(pair.with_step("tokenizer", config='parameters [ { key: "max_length", value: { string_value: "32" } } ]')) \
        == ("32", "32")
    assert _lengths(Pipeline("tiny", "splade", exported(SPLADE_TINY))) == ("512", "512")
    with pytest.raises(ValueError, match=r"\[tokenizer.parameters\] max_length = 1: must be an integer >= 2"):
        pipeline_configs(pair.with_step("tokenizer", {"max_length": 1}))


def test_the_gpu_engine_profile_follows_the_served_length():
    """The profile is read from the same lengths the tokenizer serves: the export's 256 for a
    document, a spec's max_length where one is set (never the template's 512 instead)."""
    pair = Pipeline("pair", "splade", exported(PAIR))
    assert GpuPipeline.load(pipeline=pair).shapes.max_length == 256
    assert GpuPipeline.load(pipeline=pair.with_step("tokenizer", {"max_length": 64})).shapes.max_length == 64
    assert _lengths(pair.with_step("tokenizer", {"max_length": 64}), "gpu") == ("64", "64")


def test_a_spec_max_length_is_served_on_an_export_with_its_own_side_lengths(tmp_path):
    """Only max_length = 64 in the spec; the export says 256 for documents: 64-token documents."""
    pipeline = Pipeline("pair", "splade", exported(PAIR)).with_step("tokenizer", {"max_length": 64})
    repository = assemble(tmp_path / "model_repository", [pipeline])
    with running(repository, tmp_path / "server.log") as server:
        for protocol in ("grpc", "http"):
            c = triton.client(protocol, server)
            for side in ("document", "query"):
                texts = [triton.text_input(protocol, [LONG, "short text"])]
                answer = c.infer("pair", texts, parameters={"input_type": side})
                assert answer.as_numpy("truncated").ravel().tolist() == [True, False], (protocol, side)
                assert answer.as_numpy("num_tokens").ravel().tolist() == [402, 4]  # the whole text's count
                ids = c.infer("pair_tokenizer", texts, parameters={"input_type": side}).as_numpy("input_ids")
                assert ids.shape == (2, 64), (protocol, side)
                error = triton.error_of(lambda: c.infer("pair", texts, parameters={"input_type": side, "overflow": "error"}))
                assert "text 0 has 402 tokens; the limit is 64 tokens" in error.message(), error.message()


def test_the_tokenizer_serves_a_hand_written_configs_max_length(tmp_path):
    """A config without side lengths (written by hand, not assembled): its max_length wins over the export's."""
    repository = assemble(tmp_path / "model_repository", [Pipeline("pair", "splade", exported(PAIR))])
    path = repository / "pair_tokenizer" / "config.pbtxt"
    config = read_config(path)
    del config.parameters["query_max_length"], config.parameters["document_max_length"]
    config.parameters["max_length"].string_value = "48"
    path.write_text(text_format.MessageToString(config))
    with running(repository, tmp_path / "server.log") as server:
        c = triton.client("grpc", server)
        ids = c.infer("pair_tokenizer", [triton.text_input("grpc", [LONG])], parameters={"input_type": "document"})
        assert ids.as_numpy("input_ids").shape == (1, 48)


# ------------------------------------------------------------------ the served fidelity gate


def _gated_export(folder: Path, precisions: dict | None) -> Path:
    """SPLADE-tiny's export (files linked) whose export_info.json records ``precisions``."""
    folder.mkdir(parents=True)
    for name in os.listdir(exported(SPLADE_TINY)):
        if name != "export_info.json" and (SPLADE_TINY / name).is_file():
            os.link(SPLADE_TINY / name, folder / name)
    info = json.loads((SPLADE_TINY / "export_info.json").read_text())
    info.pop("precisions", None)
    if precisions is not None:
        info["precisions"] = precisions
    (folder / "export_info.json").write_text(json.dumps(info))
    return folder


def _bf16_repository(tmp_path: Path, precisions: dict | None, gate: str) -> Path:
    model = _gated_export(tmp_path / "model", precisions)
    pipeline = Pipeline("splade", "splade", model).with_step(
        "encoder", {"runtime": "openvino", "precision": "bf16", "fidelity_gate": gate})
    return assemble(tmp_path / "model_repository", [pipeline])


FAILED = {"openvino_bf16": {"gate": "fail", "failures": ["worst text's top-50 recall 0.9400 < 0.95"]}}


def test_a_precision_whose_recorded_gate_failed_is_not_served(tmp_path):
    repository = _bf16_repository(tmp_path, FAILED, "enforce")
    message = "precision bf16 failed its fidelity gate against fp32 (worst text's top-50 recall 0.9400 < 0.95"
    log = load_failure(repository, tmp_path / "server.log", message)
    assert message in log and "splade_encoder" in log


def test_a_precision_without_a_recorded_gate_is_not_served_under_enforce(tmp_path):
    repository = _bf16_repository(tmp_path, None, "enforce")
    message = "precision bf16: no fidelity gate recorded for openvino_bf16"
    log = load_failure(repository, tmp_path / "server.log", message)
    assert message in log and "python -m export.quantize" in log and "fidelity_gate to warn" in log


@pytest.mark.skipif(not set(ISA_FLAGS["bf16"]) & cpu_flags(), reason="this CPU has no bf16 instructions: "
                    "the load is refused for that before any gate (tests/test_runtimes.py)")
def test_warn_serves_a_precision_without_a_passing_gate_and_says_so(tmp_path):
    repository = _bf16_repository(tmp_path, FAILED, "warn")
    log = tmp_path / "server.log"
    with running(repository, log) as server:
        out = triton.encode("grpc", triton.client("grpc", server), ["what is the capital of france"],
                            outputs=("indices", "values"))
        assert (out["values"] > 0).any()
    assert "precision bf16 failed its fidelity gate" in log.read_text(errors="replace")
