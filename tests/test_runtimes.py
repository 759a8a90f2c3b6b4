"""The encoder's runtimes and precisions (issue 11): OpenVINO fp32 is ONNX Runtime fp32,
served and in process; bf16 / int8 load where the CPU has the instruction set and are
refused, naming it, where it does not; the graph is compiled once whatever the shapes."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from splade_triton.artifacts.texts import VARIED_TEXTS
from splade_triton.serving import runtime
from splade_triton.serving.encoding import RaggedEncoder
from splade_triton.serving.runtime import ISA_FLAGS, check_precision, cpu_flags, open_session
from splade_triton.serving.tokens import load_tokenizer, pad_ids

from .conftest import BGE_M3_TINY, ROOT, assemble_variant, running

SPLADE_TINY = ROOT / "build" / "models" / "splade-tiny"


@pytest.fixture(scope="module")
def int8_model(tmp_path_factory):
    """SPLADE-tiny quantized by NNCF on a few calibration batches (export.quantize's path)."""
    from splade_triton.artifacts.quantize import calibration_batches, quantize_int8

    return quantize_int8(SPLADE_TINY / "model.onnx", tmp_path_factory.mktemp("int8") / runtime.INT8_FILE,
                         calibration_batches(SPLADE_TINY, 32))


# ------------------------------------------------------------------ instruction sets


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu avx2 avx512f avx512_vnni\n\n"
                    "processor\t: 1\nflags\t\t: fpu\n")
    assert cpu_flags(str(info)) == {"fpu", "avx2", "avx512f", "avx512_vnni"}
    assert cpu_flags(str(tmp_path / "missing")) == frozenset()


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_a_precision_the_cpu_lacks_is_refused_naming_the_instruction_set(precision, tmp_path):
    flags = {"fpu", "sse4_2", "avx2", "avx512f", "fma"}  # an AVX-512 CPU without bf16 or VNNI
    with pytest.raises(ValueError) as info:
        check_precision("openvino", precision, flags)
    message = str(info.value)
    assert f"precision {precision} refused" in message
    for flag in ISA_FLAGS[precision]:
        assert flag in message
    # open_session refuses before touching the file (the load of the Triton model fails with it).
    with pytest.raises(ValueError, match=ISA_FLAGS[precision][0]):
        open_session(str(tmp_path / "absent.onnx"), "openvino", precision, flags=flags)
    # Any one of the flags is enough.
    for flag in ISA_FLAGS[precision]:
        check_precision("openvino", precision, flags | {flag})


def test_onnxruntime_serves_fp32_only_and_names_are_checked():
    with pytest.raises(ValueError, match="needs runtime openvino"):
        check_precision("onnxruntime", "bf16", {"avx512_bf16"})
    with pytest.raises(ValueError, match="runtime must be one of"):
        check_precision("tensorrt", "fp32")
    with pytest.raises(ValueError, match="precision must be one of"):
        check_precision("openvino", "fp16")


# ------------------------------------------------------------------ in process


def _batches(tokenizer, texts, size=8):
    encodings = tokenizer.encode_batch(list(texts))
    return [pad_ids(encodings[i: i + size]) for i in range(0, len(encodings), size)]


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_lower_precisions_load_here_or_are_refused_with_the_isa_message(precision, int8_model):
    path = SPLADE_TINY / "model.onnx" if precision == "bf16" else int8_model
    if set(ISA_FLAGS[precision]) & cpu_flags():
        session = open_session(str(path), "openvino", precision, threads=2)
        if precision == "bf16":
            assert session.inference_precision == "bf16"
        tokenizer = load_tokenizer(SPLADE_TINY / "tokenizer.json")
        out = RaggedEncoder(session, 8192).encode(_batches(tokenizer, VARIED_TEXTS[:8]))
        assert np.isfinite(np.concatenate(out)).all()
    else:
        with pytest.raises(ValueError, match=f"precision {precision} refused"):
            open_session(str(path), "openvino", precision, threads=2)


def test_openvino_fp32_is_exact_fp32_even_on_a_bf16_cpu():
    session = open_session(str(SPLADE_TINY / "model.onnx"), "openvino", "fp32", threads=2)
    assert session.inference_precision == "f32"


def test_openvino_compiles_once_whatever_the_shapes(monkeypatch):
    import openvino as ov

    calls = []
    original = ov.Core.compile_model

    def counting(self, *args, **kwargs):
        calls.append(args[1:] if len(args) > 1 else kwargs)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ov.Core, "compile_model", counting)
    session = open_session(str(SPLADE_TINY / "model.onnx"), "openvino", "fp32", threads=2)
    compiled = session.compiled
    assert all(p.get_partial_shape().is_dynamic for p in compiled.inputs)
    rng = np.random.default_rng(0)
    for length in range(1, 41):  # 40 distinct sequence lengths, 3 batch sizes
        for batch in (1, 3, 8):
            ids = rng.integers(1000, 2000, size=(batch, length)).astype(np.int64)
            (out,) = session.run(["pooled_logits"], {"input_ids": ids, "attention_mask": np.ones_like(ids)})
            assert out.shape == (batch, 30522)
    assert len(calls) == 1 and session.compiled is compiled and session.compile_count == 1


def test_bge_m3_openvino_fp32_equals_onnxruntime_on_the_fixture():
    if not (BGE_M3_TINY / "model.onnx").is_file():
        pytest.fail("the BGE-M3 fixture is not exported: run script/setup")
    tokenizer = load_tokenizer(BGE_M3_TINY / "tokenizer.json")
    texts = [*VARIED_TEXTS, "short", "a longer text about retrieval " * 20]
    batches = _batches(tokenizer, texts)
    outputs = {}
    for name in ("onnxruntime", "openvino"):
        session = open_session(str(BGE_M3_TINY / "model.onnx"), name, "fp32", threads=2)
        encoder = RaggedEncoder(session, 8192, {"token_weights": 0, "colbert": 1})
        outputs[name] = encoder.run(batches, ["dense", "token_weights", "colbert"])
    for ort_out, ov_out in zip(outputs["onnxruntime"], outputs["openvino"]):
        for key in ("dense", "token_weights", "colbert"):
            assert ort_out[key].shape == ov_out[key].shape
            np.testing.assert_allclose(ov_out[key], ort_out[key], atol=1e-5, rtol=0)
            assert ((ov_out[key] > 0) == (ort_out[key] > 0)).all() or key != "token_weights"


# ------------------------------------------------------------------ served


def _embed(url: str, texts: list[str]) -> np.ndarray:
    client = grpcclient.InferenceServerClient(url)
    rows = []
    for start in range(0, len(texts), 8):  # several requests of different lengths, batched by Triton
        chunk = texts[start: start + 8]
        text = grpcclient.InferInput("text", [len(chunk), 1], "BYTES")
        text.set_data_from_numpy(np.array([[t.encode()] for t in chunk], dtype=object))
        result = client.infer("splade_embedding", [text], outputs=[grpcclient.InferRequestedOutput("embedding")])
        rows.append(result.as_numpy("embedding"))
    client.close()
    return np.concatenate(rows)


def test_served_splade_with_openvino_fp32_equals_onnxruntime_over_grpc(tmp_path):
    texts = [*VARIED_TEXTS, "what is the capital of france", "the capital of france is paris " * 30]
    got = {}
    for name in ("onnxruntime", "openvino"):
        repository = assemble_variant(tmp_path / name, encoder={"parameters": {"runtime": name, "precision": "fp32"}})
        model_py = (repository / "splade_encoder" / "1" / "model.py").read_text()
        assert model_py == (ROOT / "templates" / "common" / "encoder" / "model.py").read_text()
        with running(repository, tmp_path / f"{name}.log") as server:
            got[name] = _embed(server.grpc_url, texts)
    ort, ov = got["onnxruntime"], got["openvino"]
    assert ort.shape == ov.shape == (len(texts), 30522)
    assert np.abs(ort - ov).max() <= 1e-4
    assert ((ort > 0) == (ov > 0)).all()


def test_a_precision_without_a_passing_recorded_gate_is_refused_unless_warn(tmp_path):
    from splade_triton.serving.runtime import check_fidelity

    info = tmp_path / "export_info.json"
    info.write_text('{"precisions": {"openvino_bf16": {"gate": "fail", "failures": ["worst text 0.94 < 0.95"]},'
                    ' "openvino_int8": {"gate": "pass", "failures": []}}}')
    assert check_fidelity(str(info), "openvino", "fp32") is None
    assert check_fidelity(str(info), "openvino", "int8") is None
    with pytest.raises(ValueError, match=r"failed its fidelity gate .*worst text 0.94 < 0.95"):
        check_fidelity(str(info), "openvino", "bf16")
    assert "failed its fidelity gate" in check_fidelity(str(info), "openvino", "bf16", enforce=False)
    # Nothing recorded (export.quantize not run): refused, saying how to record it; warn serves it.
    with pytest.raises(ValueError, match=r"no fidelity gate recorded for openvino_bf16 .*python -m export.quantize"):
        check_fidelity(str(tmp_path / "absent.json"), "openvino", "bf16")
    assert "python -m export.quantize" in check_fidelity(str(tmp_path / "absent.json"), "openvino", "bf16", enforce=False)
