"""The GPU path (TensorRT encoder, GPU repository, image) as far as it is checkable without a GPU.

Tests needing TensorRT or a CUDA GPU are at the end; they skip, saying why,
where those are absent.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import yaml
from tritonclient.grpc import model_config_pb2 as mc

from splade_triton.artifacts.fp32_layers import DEFAULT_FP32_GROUPS, FP32_GROUPS, Layer, layers_from_onnx, select_fp32_layers
from splade_triton.artifacts.gpu_pipeline import GpuPipeline
from splade_triton.artifacts.gpu_probe import EXIT_UNAVAILABLE, Unavailable, decode_tensorrt_version, probe_gpu
from splade_triton.artifacts.gpu_startup import plan_folder, with_queue_delay
from splade_triton.artifacts.numerics import compare_weights, padded_batches, top_terms, validation_texts
from splade_triton.artifacts.provenance import expected_provenance, plan_problems
from splade_triton.artifacts.repository import Pipeline, assemble, pipeline_configs
from splade_triton.artifacts.shapes import Shapes, engine_profile, read_config
from splade_triton.artifacts.texts import VARIED_TEXTS
from splade_triton.serving.tokens import load_tokenizer
from tests.conftest import ROOT, Server, default_pipeline

DOCKER = ROOT / "docker"
MODEL = default_pipeline().model  # the exported model directory of pipelines/splade.toml
ONNX = MODEL / "model.onnx"
TOKENIZER = MODEL / "tokenizer.json"
STEPS = ("tokenizer", "encoder", "sparsify", "ensemble", "embedding", "windows")


def io_signature(config) -> dict:
    return {
        "inputs": [(i.name, i.data_type, list(i.dims)) for i in config.input],
        "outputs": [(o.name, o.data_type, list(o.dims)) for o in config.output],
    }


def configs(device: str, pipeline=None) -> dict:
    return pipeline_configs(pipeline or default_pipeline(), device)


# --- the GPU repository ----------------------------------------------------------


def test_cpu_and_gpu_encoders_declare_identical_inputs_outputs_and_dtypes():
    cpu, gpu = configs("cpu")["encoder"], configs("gpu")["encoder"]
    assert io_signature(gpu) == io_signature(cpu)
    assert [i.data_type for i in gpu.input] == [mc.TYPE_INT64, mc.TYPE_INT64]
    assert [o.data_type for o in gpu.output] == [mc.TYPE_FP32]
    assert gpu.name == cpu.name == "splade_encoder"


def test_gpu_encoder_is_a_batched_tensorrt_plan_on_gpu_instances():
    gpu, cpu = configs("gpu")["encoder"], configs("cpu")["encoder"]
    assert gpu.platform == "tensorrt_plan" and not gpu.backend
    assert gpu.instance_group and all(g.kind == mc.ModelInstanceGroup.KIND_GPU for g in gpu.instance_group)
    assert gpu.HasField("dynamic_batching")
    assert gpu.dynamic_batching.default_queue_policy == cpu.dynamic_batching.default_queue_policy
    # An engine takes rectangular batches only; TensorRT needs batch_input for ragged ones.
    assert not any(i.allow_ragged_batch for i in gpu.input)


def test_gpu_repository_shares_everything_but_the_encoder(tmp_path, repository):
    plan = tmp_path / "engines" / "model.plan"
    plan.parent.mkdir()
    plan.write_bytes(b"not a real plan")
    out = assemble(tmp_path / "gpu", [default_pipeline()], device="gpu", plans={"splade": plan})
    names = sorted(default_pipeline().model_name(step) for step in STEPS)
    assert sorted(p.name for p in out.iterdir()) == names
    assert (out / "splade_encoder" / "1" / "model.plan").read_bytes() == plan.read_bytes()
    assert not (out / "splade_encoder" / "1" / "model.py").exists()
    for model in ("splade_tokenizer", "splade_sparsify"):
        assert (out / model / "1" / "model.py").read_bytes() == (repository / model / "1" / "model.py").read_bytes()
    served = {m: read_config(out / m / "config.pbtxt") for m in names}
    for ensemble in ("splade", "splade_embedding", "splade_windows"):
        assert served[ensemble] == read_config(repository / ensemble / "config.pbtxt")
    assert served["splade_encoder"].platform == "tensorrt_plan"
    tokenizer = served["splade_tokenizer"]
    assert tokenizer.parameters["pad_to_multiple_of"].string_value == "32"
    # A chunked request's windows fit the engine's max batch.
    assert int(tokenizer.parameters["max_windows"].string_value) <= served["splade_encoder"].max_batch_size
    # Everything else of the tokenizer's config is the CPU one.
    cpu_tokenizer = read_config(repository / "splade_tokenizer" / "config.pbtxt")
    for key in ("pad_to_multiple_of", "max_windows"):
        del tokenizer.parameters[key], cpu_tokenizer.parameters[key]
    assert tokenizer == cpu_tokenizer


def test_a_gpu_repository_needs_an_existing_plan(tmp_path):
    with pytest.raises(FileNotFoundError, match="TensorRT plan not found"):
        assemble(tmp_path / "gpu", [default_pipeline()], device="gpu", plans={"splade": tmp_path / "missing.plan"})


def test_queue_delay_is_a_setting(tmp_path):
    pipeline = with_queue_delay(default_pipeline(), 250)
    batching = configs("gpu", pipeline)["encoder"].dynamic_batching
    assert batching.max_queue_delay_microseconds == 250
    # Only the delay changes: the queue policy of the template stays.
    assert batching.default_queue_policy == configs("gpu")["encoder"].dynamic_batching.default_queue_policy
    assert with_queue_delay(default_pipeline(), None) == default_pipeline()
    out = assemble(tmp_path / "gpu", [with_queue_delay(default_pipeline(), 4000)], device="gpu")
    assert read_config(out / "splade_encoder" / "config.pbtxt").dynamic_batching.max_queue_delay_microseconds == 4000
    with pytest.raises(ValueError, match="queue delay"):
        with_queue_delay(default_pipeline(), -1)


def test_plans_are_kept_per_tensorrt_release_and_gpu_family(tmp_path):
    found = {"tensorrt_version": "10.8.0", "gpu": {"name": "NVIDIA H100 PCIe", "compute_capability": "9.0"}}
    assert plan_folder(tmp_path, found) == tmp_path / "trt10.8.0-sm9.0"


# --- the engine profile: one source of truth ----------------------------------------


def gpu_shapes() -> Shapes:
    return Shapes.from_configs(configs("gpu"))


def test_profile_covers_every_tokenizer_bucket_and_the_max_batch_size():
    shapes = gpu_shapes()
    profile = engine_profile(shapes)
    buckets = shapes.buckets()
    assert buckets[-1] == shapes.max_length == 512
    for seq in buckets:
        for batch in (1, shapes.request_max_batch_size, shapes.encoder_max_batch_size):
            assert profile.covers(batch, seq), (batch, seq)
    # Triton forms batches up to the config's max_batch_size: the profile must reach it exactly.
    assert profile.max == (shapes.encoder_max_batch_size, shapes.max_length)
    assert profile.min == (1, 1)
    assert profile.covers(*profile.opt) and profile.opt[1] in buckets
    # And every length a text can have before padding.
    assert all(profile.covers(1, n) for n in range(1, shapes.max_length + 1))


def test_profile_follows_the_settings(tmp_path):
    pipeline = (default_pipeline()
                .with_step("encoder", config="max_batch_size: 128")
                .with_step("tokenizer", parameters={"pad_to_multiple_of": 64}))
    shapes = Shapes.from_configs(configs("gpu", pipeline))
    assert engine_profile(shapes).max == (128, 512)
    assert shapes.buckets() == list(range(64, 513, 64))
    # The same settings read back from the assembled repository, and by the GPU tools.
    out = assemble(tmp_path / "gpu", [pipeline], device="gpu")
    assert Shapes.from_repository(out, "splade") == shapes
    assert GpuPipeline.load(pipeline=pipeline).shapes == shapes


def test_the_gpu_tools_read_the_pipelines_model_directory(tmp_path):
    settings = GpuPipeline.load()
    assert (settings.onnx, settings.tokenizer) == (ONNX, TOKENIZER)
    assert GpuPipeline.load(onnx=tmp_path / "other.onnx").onnx == tmp_path / "other.onnx"
    spec = tmp_path / "nomodel.toml"
    spec.write_text('kind = "splade"\n')
    with pytest.raises(ValueError, match="names no model directory"):
        GpuPipeline.load(spec)


@pytest.mark.parametrize("multiple", [48, 100])
def test_profile_refuses_padding_beyond_max_length(multiple):
    shapes = Shapes(64, 64, 512, multiple)
    with pytest.raises(ValueError, match="does not divide max_length"):
        engine_profile(shapes)


def test_profile_refuses_an_encoder_batch_below_a_request():
    with pytest.raises(ValueError, match="could never run"):
        engine_profile(Shapes(32, 64, 512, 32))
    with pytest.raises(ValueError, match="outside"):
        engine_profile(gpu_shapes(), opt_batch=65)


def test_profile_of_the_cpu_settings_covers_all_lengths():
    shapes = Shapes.from_configs(configs("cpu"))
    profile = engine_profile(shapes)
    assert profile.max == (shapes.encoder_max_batch_size, 512)
    assert shapes.buckets() == list(range(1, 513))


# --- the image's pins ---------------------------------------------------------------


def pins(path: Path) -> dict[str, str]:
    found = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("--hash"):
            name, _, pinned = line.partition("==")
            assert pinned, f"{path.name}: {line!r} is not pinned with =="
            found[re.sub(r"\[.*\]", "", name).strip().lower().replace("_", "-")] = pinned.split()[0]
    return found


def dockerfile_args() -> dict[str, str]:
    return dict(re.findall(r"^ARG (\w+)=(\S+)$", (DOCKER / "Dockerfile").read_text(), re.M))


def test_image_tensorrt_is_the_base_images_release():
    args = dockerfile_args()
    tensorrt = pins(DOCKER / "requirements-tensorrt.txt")
    assert set(tensorrt.values()) == {args["TENSORRT_VERSION"]}
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    build_args = compose["services"]["splade"]["build"]["args"]
    assert build_args == {"TRITON_TAG": args["TRITON_TAG"], "TENSORRT_VERSION": args["TENSORRT_VERSION"]}
    assert "FROM nvcr.io/nvidia/tritonserver:${TRITON_TAG}" in (DOCKER / "Dockerfile").read_text()


def test_compose_reserves_one_gpu_and_checks_readiness():
    service = yaml.safe_load((DOCKER / "compose.yaml").read_text())["services"]["splade"]
    devices = service["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    # A real inference through every ensemble (readiness alone stays 200 with a dead stub).
    assert service["healthcheck"]["test"][:5] == ["CMD", "python3", "-m", "splade_triton.launcher", "check"]
    assert any(v.endswith(":/engines") for v in service["volumes"])


def dockerfile_copies() -> list[str]:
    """The sources of the Dockerfile's COPY lines."""
    sources = []
    for line in re.findall(r"^COPY (.+)$", (DOCKER / "Dockerfile").read_text(), re.M):
        sources += [s for s in line.split()[:-1] if not s.startswith("--")]
    return sources


def test_image_copies_what_it_needs_and_runs_the_launcher():
    dockerfile = (DOCKER / "Dockerfile").read_text()
    ignore = (DOCKER / "Dockerfile.dockerignore").read_text()
    sources = dockerfile_copies()
    model = str(MODEL.relative_to(ROOT)) + "/"
    assert set(sources) >= {"splade_triton/", "templates/", "pipelines/", "export/", "requirements/image.txt", model,
                            "docker/entrypoint.sh"}
    for source in sources:
        assert (ROOT / source).exists(), f"{source} (generated ones: run script/setup)"
        assert f"!{source}" in ignore, f"{source} is excluded from the build context"
    # The pipeline spec the image serves names the directory it copies.
    assert default_pipeline().model == ROOT / model.rstrip("/")
    # The image refuses to build without the exported model.
    for name in ("model.onnx", "tokenizer.json"):
        assert f"{name}" in dockerfile and "run script/setup" in dockerfile
    # Served from WORKDIR with -m, the project not installed: no .pth on sys.path.
    assert "WORKDIR /opt/splade" in dockerfile
    assert ".pth" not in dockerfile and "PYTHONPATH" not in dockerfile
    assert "splade_triton.artifacts.gpu_startup" in dockerfile  # the import check at build time
    subprocess.run(["bash", "-n", str(DOCKER / "entrypoint.sh")], check=True)


def test_the_entrypoint_runs_modules_that_exist():
    """Every ``python3 -m MODULE`` of the entrypoint: the start-up step and the launcher."""
    entrypoint = (DOCKER / "entrypoint.sh").read_text()
    modules = re.findall(r"python3 -m ([\w.]+)", entrypoint)
    assert "splade_triton.launcher" in modules
    assert "splade_triton.artifacts.gpu_startup" in modules, "the start-up step is python3 -m splade_triton.artifacts.gpu_startup prepare"
    for module in modules:
        assert importlib.util.find_spec(module) is not None, module


# --- provenance and the serve-time check --------------------------------------------

PROVENANCE = {
    "format": 1,
    "tensorrt_version": "10.8.0.43",
    "gpu": {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"},
    "onnx_sha256": "ab" * 32,
    "profile": {"inputs": ["input_ids", "attention_mask"], "min": [1, 1], "opt": [64, 128], "max": [64, 512]},
    "precision": "fp16",
    "fp32_groups": ["attention_mask", "normalization", "pooling", "softmax"],
}
HERE = {"tensorrt_version": "10.8.0", "gpu": {"name": "NVIDIA H100 PCIe", "compute_capability": "9.0"}}


def test_a_matching_plan_is_accepted():
    expected = expected_provenance("ab" * 32, PROVENANCE["profile"], "fp16", PROVENANCE["fp32_groups"])
    assert plan_problems(PROVENANCE, HERE, expected) == []


def test_a_plan_of_another_tensorrt_is_refused():
    (problem,) = plan_problems(PROVENANCE, {**HERE, "tensorrt_version": "10.9.0"})
    assert "TensorRT 10.8.0.43" in problem and "TensorRT 10.9.0" in problem


def test_a_plan_for_another_gpu_family_is_refused():
    (problem,) = plan_problems(PROVENANCE, {**HERE, "gpu": {"name": "NVIDIA A100-SXM4-80GB", "compute_capability": "8.0"}})
    assert "9.0" in problem and "8.0" in problem and "A100" in problem and "H100" in problem


def test_a_stale_plan_is_reported():
    expected = expected_provenance("cd" * 32, PROVENANCE["profile"], "fp16", PROVENANCE["fp32_groups"])
    (problem,) = plan_problems(PROVENANCE, HERE, expected)
    assert "ONNX graph" in problem
    expected = expected_provenance("ab" * 32, {**PROVENANCE["profile"], "max": [128, 512]}, "fp16", PROVENANCE["fp32_groups"])
    assert "optimization profile" in plan_problems(PROVENANCE, HERE, expected)[0]


def test_a_plan_without_provenance_fields_is_refused():
    assert len(plan_problems({"format": 1}, HERE)) == 2


def test_tensorrt_library_version_decoding():
    assert decode_tensorrt_version(100800) == "10.8.0"
    assert decode_tensorrt_version(101303) == "10.13.3"
    assert decode_tensorrt_version(8601) == "8.6.1"


# --- what stays in FP32 ------------------------------------------------------------


@pytest.fixture(scope="module")
def graph():
    if not ONNX.is_file():
        pytest.skip(f"{ONNX} is missing: run script/setup")
    import onnx

    return onnx.load(str(ONNX)), layers_from_onnx(onnx.load(str(ONNX)))


def test_fp32_layers_of_the_exported_graph(graph):
    model, (layers, outputs) = graph
    ops = [n.op_type for n in model.graph.node]
    selection = select_fp32_layers(layers, outputs)
    names = {n.name: n for n in model.graph.node}
    assert len(selection.groups["normalization"]) == ops.count("LayerNormalization") > 0
    assert len(selection.groups["softmax"]) == ops.count("Softmax") > 0
    # The attention-mask bias: the out-of-FP16-range constant, its Where, and
    # the additions into the scores that each softmax reads.
    mask = set(selection.groups["attention_mask"])
    softmax_inputs = {names[s].input[0] for s in selection.groups["softmax"]}
    assert {n for n in mask if n in names and names[n].output[0] in softmax_inputs} == {
        n.name for n in model.graph.node if n.output[0] in softmax_inputs
    }
    assert any(n in names and names[n].op_type == "Where" for n in mask)
    # The pooling tail: the max over tokens and the bias add, after the vocabulary projection.
    pooling = [names[n].op_type for n in selection.groups["pooling"] if n in names]
    assert pooling == ["ReduceMax", "Add"]
    (projection,) = selection.output_only
    assert names[projection].op_type == "MatMul"
    with_decoder = select_fp32_layers(layers, outputs, FP32_GROUPS)
    assert with_decoder.groups["decoder"] == [projection] and with_decoder.output_only == []


def test_fp32_selection_fails_on_an_unexpected_graph():
    layers = [Layer("mm", "matmul", ("x", "w"), ("y",), (True,)), Layer("out", "reduce", ("y",), ("z",), (True,))]
    with pytest.raises(ValueError, match="normalization, softmax"):
        select_fp32_layers(layers, ["z"])
    assert select_fp32_layers(layers, ["z"], ["pooling"]).groups == {"pooling": ["out"]}
    with pytest.raises(ValueError, match="unknown FP32 group"):
        select_fp32_layers(layers, ["z"], ["layernorm"])


# --- fidelity metrics and texts ----------------------------------------------------------


def test_compare_weights_counts_top_terms():
    rng = np.random.default_rng(0)
    reference = np.maximum(rng.normal(size=(4, 300)), 0).astype(np.float32)
    same = compare_weights(reference, reference.copy(), k=50)
    assert same["topk_recall"] == 1.0 and same["max_abs_diff"] == 0.0 and same["nonzero_mismatches"] == 0
    candidate = reference.copy()
    for row, top in enumerate(top_terms(reference, 50)):
        if row == 0:
            candidate[0, top[:5]] = 0.0  # five of text 0's top 50 lost
    report = compare_weights(reference, candidate, k=50)
    assert report["min_text_recall"] == pytest.approx(45 / 50)
    assert report["topk_recall"] == pytest.approx((3 * 50 + 45) / 200)
    assert report["texts_below_full_recall"] == 1
    lost = reference[0, top_terms(reference, 50)[0][:5]].sum()
    assert report["min_text_mass_recall"] == pytest.approx(1 - lost / reference[0, top_terms(reference, 50)[0]].sum())


def test_the_weight_recall_counts_a_term_by_what_it_weighs():
    # A short text: 20 non-zero terms, one of them near 0. Losing that one costs 1/20 of
    # the terms but almost none of the weight; losing the heaviest costs its weight.
    reference = np.zeros((1, 100), np.float32)
    reference[0, :20] = np.linspace(2.0, 1.0, 20)
    reference[0, 19] = 0.003
    light, heavy = reference.copy(), reference.copy()
    light[0, 19] = 0.0
    heavy[0, 0] = 0.0
    light_report, heavy_report = compare_weights(reference, light), compare_weights(reference, heavy)
    assert light_report["min_text_recall"] == heavy_report["min_text_recall"] == pytest.approx(19 / 20)
    assert light_report["min_text_mass_recall"] > 0.999
    assert heavy_report["min_text_mass_recall"] == pytest.approx(1 - 2.0 / reference.sum())


def test_validation_texts_are_varied_and_cover_the_buckets():
    tokenizer = load_tokenizer(TOKENIZER, 512)
    texts = validation_texts(300, list(tokenizer.get_vocab()), seed=0)
    assert len(texts) == 300 and texts[: len(VARIED_TEXTS)] == VARIED_TEXTS
    assert texts == validation_texts(300, list(tokenizer.get_vocab()), seed=0)
    lengths = [len(e.ids) for e in tokenizer.encode_batch(texts)]
    shapes = gpu_shapes()
    reached = {shapes.padded_length(min(n, shapes.max_length)) for n in lengths}
    assert len(reached) >= len(shapes.buckets()) - 2, sorted(reached)


def test_validation_batches_are_padded_like_the_gpu_tokenizer():
    tokenizer = load_tokenizer(TOKENIZER, 512)
    shapes = gpu_shapes()
    texts = VARIED_TEXTS
    batches = padded_batches(tokenizer, texts, shapes, 7)
    assert [len(ids) for ids, _ in batches] == [7, 7, len(texts) - 14]
    encodings = tokenizer.encode_batch(texts)
    row = 0
    for ids, mask in batches:
        assert ids.dtype == mask.dtype == np.int64 and ids.shape[1] in shapes.buckets()
        for r in range(len(ids)):
            n = len(encodings[row].ids)
            assert ids[r, :n].tolist() == encodings[row].ids and mask[r].sum() == n and not ids[r, n:].any()
            row += 1


# --- the GPU repository's shared models on a real (CPU) tritonserver --------------------


def test_gpu_tokenizer_and_sparsify_configs_serve_the_same_vectors(tmp_path, repository):
    """The GPU repository with the CPU encoder in the engine's place: the
    assembled tokenizer (batch padding, 32-token buckets) and sparsify configs
    load in Triton and serve the CPU path's vectors."""
    gpu = assemble(tmp_path / "repository", [default_pipeline()], device="gpu")
    shutil.rmtree(gpu / "splade_encoder")
    shutil.copytree(repository / "splade_encoder", gpu / "splade_encoder", ignore=shutil.ignore_patterns("__pycache__"))
    server = Server(gpu, tmp_path / "server.log")
    try:
        server.wait_ready()
        from tests import triton

        client = triton.client("grpc", server)
        served = client.get_model_config("splade_tokenizer").config.parameters
        assert served["pad_to_multiple_of"].string_value == "32"
        # Concurrent requests of different lengths, so one tokenizer execution pads several alike.
        texts = VARIED_TEXTS
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda t: triton.encode("grpc", client, [t], outputs=("embedding",)), texts))
        got = np.concatenate([r["embedding"] for r in results])
        import onnxruntime as ort

        from splade_triton.serving.splade import activate

        tokenizer = load_tokenizer(TOKENIZER, 512)
        session = ort.InferenceSession(str(ONNX), providers=["CPUExecutionProvider"])
        expected = []
        for enc in tokenizer.encode_batch(texts):
            ids = np.array([enc.ids], dtype=np.int64)
            expected.append(activate(session.run(None, {"input_ids": ids, "attention_mask": np.ones_like(ids)})[0]))
        np.testing.assert_allclose(got, np.concatenate(expected), rtol=0, atol=1e-4)
    finally:
        server.stop()


# --- without TensorRT or a GPU: one line, status 3 -------------------------------------


def run_tool(*args, env=None, timeout=120):
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, cwd=ROOT, env=env, timeout=timeout)


def has_tensorrt() -> bool:
    return any(importlib.util.find_spec(name) is not None for name in ("tensorrt", "tensorrt_bindings"))


def has_gpu() -> bool:
    try:
        probe_gpu(0)
        return True
    except Unavailable:
        return False


@pytest.mark.skipif(has_tensorrt(), reason="TensorRT is installed here")
@pytest.mark.parametrize("tool", ["export.build_engine", "export.validate_engine"])
def test_without_tensorrt_the_tools_exit_with_one_line(tool):
    result = run_tool("-m", tool)
    assert result.returncode == EXIT_UNAVAILABLE, result.stderr
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "TensorRT is not installed" in lines[0] and "Traceback" not in result.stderr
    if not has_gpu():
        assert "no CUDA GPU is visible" in lines[0] or "no NVIDIA driver" in lines[0]


@pytest.mark.skipif(has_gpu(), reason="a CUDA GPU is visible here")
def test_without_a_gpu_the_build_says_so(tmp_path):
    # A stand-in `tensorrt` module, importable and nothing more, so that only the
    # missing GPU is left to report (its code is never called).
    (tmp_path / "tensorrt.py").write_text('__version__ = "10.8.0.43"\n')
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    result = run_tool("-m", "export.build_engine", env=env)
    assert result.returncode == EXIT_UNAVAILABLE, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert "TensorRT is not installed" not in line
    assert "no NVIDIA driver" in line or "no CUDA GPU is visible" in line


@pytest.mark.skipif(has_gpu(), reason="a CUDA GPU is visible here")
def test_without_a_gpu_the_start_up_commands_exit_with_one_line(tmp_path):
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"")
    startup = ("-m", "splade_triton.artifacts.gpu_startup")
    for args in ([*startup, "check", "--plan", plan],
                 [*startup, "prepare", "--engines", tmp_path / "e", "--output", tmp_path / "r"],
                 [*startup, "probe"]):
        result = run_tool(*args)
        assert result.returncode == EXIT_UNAVAILABLE, result.stderr
        assert "Traceback" not in result.stderr
        if "probe" not in args:
            assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "r").exists()


def test_dry_run_prints_the_profile_and_fp32_layers_without_tensorrt():
    if not ONNX.is_file():
        pytest.skip(f"{ONNX} is missing: run script/setup")
    result = run_tool("-m", "export.build_engine", "--dry-run")
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert plan["profile"]["max"] == [64, 512] and plan["tokenizer_buckets"][-1] == 512
    assert set(plan["fp32_layers"]) == set(DEFAULT_FP32_GROUPS)


# --- the start-up step, with the probes standing in for a GPU server -------------------


@pytest.fixture
def fake_server(monkeypatch):
    """gpu_startup as on a server running TensorRT 10.8.0 on an H100 (nothing probed)."""
    from splade_triton.artifacts import gpu_startup

    found = {"tensorrt_version": "10.8.0", "gpu": {"name": "NVIDIA H100 PCIe", "compute_capability": "9.0"}}
    monkeypatch.setattr(gpu_startup, "runtime", lambda: found)
    return gpu_startup, found


def prepare(gpu_startup, *args) -> int:
    with pytest.raises(SystemExit) as exited:
        gpu_startup.main(["prepare", *map(str, args)])
    return exited.value.code


def test_start_up_serves_a_matching_plan_without_building(tmp_path, fake_server):
    gpu_startup, found = fake_server
    if not ONNX.is_file():
        pytest.skip(f"{ONNX} is missing: run script/setup")
    from splade_triton.artifacts.files import file_sha256
    from splade_triton.artifacts.provenance import provenance_path

    plan = plan_folder(tmp_path / "engines", found) / "model.plan"
    plan.parent.mkdir(parents=True)
    plan.write_bytes(b"a plan")
    profile = engine_profile(gpu_shapes()).as_dict()
    provenance = {"format": 1, "tensorrt_version": "10.8.0.43", "gpu": found["gpu"],
                  **expected_provenance(file_sha256(ONNX), profile, "fp16", DEFAULT_FP32_GROUPS)}
    provenance_path(plan).write_text(json.dumps(provenance))
    out = tmp_path / "repository"
    # --build never: a build would fail the test.
    assert prepare(gpu_startup, "--engines", tmp_path / "engines", "--output", out, "--build", "never",
                   "--queue-delay-us", 300) == 0
    assert (out / "splade_encoder" / "1" / "model.plan").read_bytes() == b"a plan"
    encoder = read_config(out / "splade_encoder" / "config.pbtxt")
    assert encoder.platform == "tensorrt_plan" and encoder.dynamic_batching.max_queue_delay_microseconds == 300
    # Another precision is another plan: refused when building is forbidden.
    assert prepare(gpu_startup, "--engines", tmp_path / "engines", "--output", tmp_path / "r2", "--build", "never",
                   "--precision", "fp32") == 1
    assert not (tmp_path / "r2").exists()


def test_start_up_without_a_plan_and_building_forbidden_refuses(tmp_path, fake_server, capsys):
    gpu_startup, _ = fake_server
    assert prepare(gpu_startup, "--engines", tmp_path / "engines", "--output", tmp_path / "r", "--build", "never") == 1
    assert "SPLADE_BUILD_ENGINE=never" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


# --- on a machine with TensorRT and a GPU ------------------------------------------------

needs_tensorrt_gpu = pytest.mark.skipif(
    not (has_tensorrt() and has_gpu()), reason="needs TensorRT and a CUDA GPU (the GPU image has both; see docs/gpu.md)"
)


@needs_tensorrt_gpu
def test_engine_builds_validates_and_passes_the_serve_check(tmp_path):
    plan = tmp_path / "model.plan"
    built = run_tool("-m", "export.build_engine", "--output", plan, timeout=1800)
    assert built.returncode == 0, built.stderr[-3000:]
    provenance = json.loads((tmp_path / "model.plan.json").read_text())
    assert provenance["profile"]["max"] == [64, 512] and provenance["precision"] == "fp16"
    validated = run_tool("-m", "export.validate_engine", "--plan", plan, "--record", timeout=1800)
    assert validated.returncode == 0, validated.stdout + validated.stderr[-3000:]
    assert json.loads((tmp_path / "model.plan.json").read_text())["validation"]["topk_recall"] >= 0.99
    if shutil.which("tritonserver") or Path("/opt/tritonserver").is_dir():
        checked = run_tool("-m", "splade_triton.artifacts.gpu_startup", "check", "--plan", plan)
        assert checked.returncode == 0, checked.stderr


@pytest.mark.skipif(not has_gpu(), reason="needs a CUDA GPU")
def test_cuda_fp16_numerics_of_the_exported_graph(tmp_path):
    out = tmp_path / "numerics.json"
    result = run_tool("-m", "export.check_gpu_numerics", "--no-throughput", "--json-out", out, timeout=1800)
    if result.returncode == EXIT_UNAVAILABLE:
        pytest.skip(result.stderr.strip())
    assert result.returncode == 0, result.stderr[-3000:]
    numerics = json.loads(out.read_text())["numerics"]
    assert numerics["torch-fp16-engine-like"]["topk_recall"] >= 0.99


# --- the bge_m3 pipeline's GPU variant ---------------------------------------------------

from splade_triton.artifacts.gpu_pipeline import DEFAULT_FP32, add_derived_outputs, engine_graph  # noqa: E402
from splade_triton.artifacts.repository import Pipeline  # noqa: E402
from tests.conftest import BGE_M3_TINY, bge_m3_pipeline  # noqa: E402

M3_STEPS = ("tokenizer", "encoder", "lexical", "ensemble", "colbert")


def m3_export_or_skip():
    if not (BGE_M3_TINY / "model.onnx").is_file():
        pytest.skip(f"{BGE_M3_TINY} is missing: run script/setup")


def m3_spec(tmp_path, model=BGE_M3_TINY) -> Path:
    spec = tmp_path / "bge_m3.toml"
    spec.write_text(f'kind = "bge_m3"\nmodel = "{model}"\n')
    return spec


def test_bge_m3_cpu_and_gpu_encoders_declare_identical_inputs_outputs_and_dtypes():
    cpu, gpu = configs("cpu", bge_m3_pipeline())["encoder"], configs("gpu", bge_m3_pipeline())["encoder"]
    assert io_signature(gpu) == io_signature(cpu)
    assert [o.name for o in gpu.output] == ["dense", "token_weights", "colbert", "colbert_lengths"]
    assert [o.data_type for o in gpu.output] == [mc.TYPE_FP32, mc.TYPE_FP32, mc.TYPE_FP32, mc.TYPE_INT32]
    assert gpu.platform == "tensorrt_plan" and not gpu.backend and gpu.name == cpu.name == "bge_m3_encoder"
    assert all(g.kind == mc.ModelInstanceGroup.KIND_GPU for g in gpu.instance_group)
    assert not any(i.allow_ragged_batch for i in gpu.input)
    assert gpu.dynamic_batching.default_queue_policy == cpu.dynamic_batching.default_queue_policy


def test_bge_m3_gpu_repository_shares_everything_but_the_encoder(tmp_path):
    m3_export_or_skip()
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"not a real plan")
    cpu = assemble(tmp_path / "cpu", [bge_m3_pipeline()])
    gpu = assemble(tmp_path / "gpu", [bge_m3_pipeline()], device="gpu", plans={"bge_m3": plan})
    names = sorted(bge_m3_pipeline().model_name(step) for step in M3_STEPS)
    assert sorted(p.name for p in gpu.iterdir()) == names
    assert (gpu / "bge_m3_encoder" / "1" / "model.plan").read_bytes() == b"not a real plan"
    assert not (gpu / "bge_m3_encoder" / "1" / "model.py").exists()
    for model in ("bge_m3_tokenizer", "bge_m3_lexical"):
        assert (gpu / model / "1" / "model.py").read_bytes() == (cpu / model / "1" / "model.py").read_bytes()
    for ensemble in ("bge_m3", "bge_m3_colbert"):
        assert read_config(gpu / ensemble / "config.pbtxt") == read_config(cpu / ensemble / "config.pbtxt")
    tokenizer = read_config(gpu / "bge_m3_tokenizer" / "config.pbtxt")
    assert tokenizer.parameters["pad_to_multiple_of"].string_value == "32"
    cpu_tokenizer = read_config(cpu / "bge_m3_tokenizer" / "config.pbtxt")
    assert cpu_tokenizer.parameters["pad_to_multiple_of"].string_value == "1"
    for key in ("query_max_length", "document_max_length", "max_text_bytes", "max_request_bytes"):
        assert tokenizer.parameters[key] == cpu_tokenizer.parameters[key]
    lexical = read_config(gpu / "bge_m3_lexical" / "config.pbtxt")
    assert lexical.parameters["FORCE_CPU_ONLY_INPUT_TENSORS"].string_value == "yes"


def test_bge_m3_profile_reaches_the_document_length(tmp_path):
    """Batch up to the encoder's max_batch_size, sequence up to document_max_length
    (the template's 8192 where the export serves it), every 32-token bucket covered."""
    from tests.test_bge_m3 import fake_export

    pipeline = Pipeline("m3", "bge_m3", fake_export(tmp_path / "m3", max_length=8192))
    shapes = Shapes.from_configs(configs("gpu", pipeline))
    profile = engine_profile(shapes)
    assert shapes.max_length == 8192
    assert profile.max == (64, 8192) and profile.min == (1, 1)
    assert shapes.buckets() == list(range(32, 8193, 32))
    assert all(profile.covers(64, seq) for seq in shapes.buckets())
    # The query length alone never decides it; a shorter document length does.
    shorter = pipeline.with_step("tokenizer", parameters={"document_max_length": 2048})
    assert engine_profile(Shapes.from_configs(configs("gpu", shorter))).max == (64, 2048)
    # Read back from an assembled repository, and by the GPU tools, the same.
    out = assemble(tmp_path / "gpu", [pipeline], device="gpu")
    assert Shapes.from_repository(out, "m3") == shapes
    assert GpuPipeline.load(pipeline=pipeline).shapes == shapes
    with pytest.raises(ValueError, match="does not divide max_length"):
        engine_profile(Shapes.from_configs(configs("gpu", pipeline.with_step("tokenizer", parameters={"pad_to_multiple_of": 48}))))


def test_the_gpu_tools_read_the_encoder_configs_outputs_and_fp32_groups():
    m3, splade = GpuPipeline.load(pipeline=bge_m3_pipeline()), GpuPipeline.load()
    assert m3.outputs == {"dense": "FLOAT", "token_weights": "FLOAT", "colbert": "FLOAT", "colbert_lengths": "INT32"}
    assert m3.inputs == splade.inputs == {"input_ids": "INT64", "attention_mask": "INT64"}
    assert splade.outputs == {"pooled_logits": "FLOAT"}
    assert splade.fp32_groups == DEFAULT_FP32_GROUPS == DEFAULT_FP32["splade"]
    assert m3.fp32_groups == DEFAULT_FP32["bge_m3"] and "heads" in m3.fp32_groups and "pooling" not in m3.fp32_groups


def test_the_engine_graph_adds_colbert_lengths_as_the_cpu_encoder_computes_them(tmp_path):
    """The graph TensorRT compiles, run here in ONNX Runtime: the export's outputs
    unchanged, plus colbert_lengths int32 [N, 1] = max(real tokens - 1, 0)."""
    m3_export_or_skip()
    import onnxruntime as ort

    outputs = GpuPipeline.load(pipeline=bge_m3_pipeline()).outputs
    graph = engine_graph(BGE_M3_TINY / "model.onnx", outputs, tmp_path / "engine-graph")
    assert graph == tmp_path / "engine-graph" / "model.onnx"
    assert engine_graph(ONNX, {"pooled_logits": "FLOAT"}, tmp_path / "unused") == ONNX  # nothing to add
    original = ort.InferenceSession(str(BGE_M3_TINY / "model.onnx"), providers=["CPUExecutionProvider"])
    augmented = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    assert [o.name for o in augmented.get_outputs()] == ["dense", "token_weights", "colbert", "colbert_lengths"]
    tokenizer = load_tokenizer(BGE_M3_TINY / "tokenizer.json", 512)
    from splade_triton.serving.tokens import pad_ids

    ids, mask = pad_ids(tokenizer.encode_batch(["", "short", VARIED_TEXTS[3], VARIED_TEXTS[5] * 3]))
    feed = {"input_ids": ids, "attention_mask": mask}
    got = dict(zip([o.name for o in augmented.get_outputs()], augmented.run(None, feed)))
    for name, want in zip(("dense", "token_weights", "colbert"), original.run(None, feed)):
        np.testing.assert_array_equal(got[name], want)
    assert got["colbert_lengths"].dtype == np.int32
    assert got["colbert_lengths"].tolist() == np.maximum(mask.sum(axis=1) - 1, 0).reshape(-1, 1).tolist()


def test_the_engine_graph_links_external_data(tmp_path):
    """A graph past protobuf's 2 GB keeps its weights in model.onnx.data: the
    engine graph beside a link to it, never a copy of gigabytes."""
    import onnx
    from onnx import TensorProto, helper

    source = tmp_path / "export"
    source.mkdir()
    weight = helper.make_tensor("w", TensorProto.FLOAT, [2, 2], np.array([1, 2, 3, 4], np.float32).tobytes(), raw=True)
    graph = helper.make_graph(
        [helper.make_node("Cast", ["input_ids"], ["x"], to=TensorProto.FLOAT), helper.make_node("MatMul", ["x", "w"], ["dense"])],
        "g", [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", 2]),
              helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", 2])],
        [helper.make_tensor_value_info("dense", TensorProto.FLOAT, ["batch", 2])], [weight])
    onnx.save(helper.make_model(graph), str(source / "model.onnx"), save_as_external_data=True,
              location="model.onnx.data", size_threshold=0)
    out = engine_graph(source / "model.onnx", ["dense", "colbert_lengths"], tmp_path / "engine")
    linked = tmp_path / "engine" / "model.onnx.data"
    assert linked.is_file() and linked.read_bytes() == (source / "model.onnx.data").read_bytes()
    assert os.path.samefile(linked, source / "model.onnx.data") or linked.is_symlink()
    import onnxruntime as ort

    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    dense, lengths = session.run(None, {"input_ids": np.array([[1, 1]]), "attention_mask": np.array([[1, 0]])})
    assert dense.tolist() == [[4.0, 6.0]] and lengths.tolist() == [[0]]
    with pytest.raises(ValueError, match="declares output"):
        add_derived_outputs(onnx.load(str(source / "model.onnx"), load_external_data=False), ["dense", "sparse"])


@pytest.fixture(scope="module")
def m3_opset18(tmp_path_factory) -> Path:
    """The tiny BGE-M3 exported as the GPU image needs it: opset 18, attention unfused."""
    m3_export_or_skip()
    output = tmp_path_factory.mktemp("m3-opset18") / "bge-m3-tiny"
    result = run_tool("-m", "export.export_onnx", "--model", str(ROOT / "build" / "models" / "bge-m3-tiny-src"),
                      "--output", str(output), "--opset", "18", timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    return output


def test_bge_m3_dry_run_refuses_the_cpu_export_with_fused_attention(tmp_path):
    m3_export_or_skip()
    result = run_tool("-m", "export.build_engine", "--pipeline", m3_spec(tmp_path), "--dry-run")
    assert result.returncode == 1
    assert "ONNX Attention ops" in result.stderr and "--opset 18" in result.stderr


def test_bge_m3_dry_run_prints_the_fp32_layers_of_its_graph(tmp_path, m3_opset18):
    import onnx

    result = run_tool("-m", "export.build_engine", "--pipeline", m3_spec(tmp_path, m3_opset18), "--dry-run")
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert plan["pipeline"]["kind"] == "bge_m3"
    assert plan["engine_outputs"] == {"dense": "FLOAT", "token_weights": "FLOAT", "colbert": "FLOAT", "colbert_lengths": "INT32"}
    assert plan["profile"]["max"] == [64, 512] and plan["tokenizer_buckets"][-1] == 512  # the tiny export's 514 positions
    assert set(plan["fp32_layers"]) == set(DEFAULT_FP32["bge_m3"])
    model = onnx.load(str(m3_opset18 / "model.onnx"))
    ops = {n.name: n.op_type for n in model.graph.node}
    assert len(plan["fp32_layers"]["normalization"]) == list(ops.values()).count("LayerNormalization")
    assert len(plan["fp32_layers"]["softmax"]) == list(ops.values()).count("Softmax")
    heads = [ops.get(n) for n in plan["fp32_layers"]["heads"]]
    # Both L2 norms (dense, colbert), the sparse head's relu, and no matrix product or LayerNorm.
    assert heads.count("ReduceL2") == 2 and "Relu" in heads
    assert not {"MatMul", "Gemm", "LayerNormalization"} & set(heads)


@pytest.mark.skipif(has_tensorrt(), reason="TensorRT is installed here")
def test_without_tensorrt_a_bge_m3_build_exits_with_one_line(tmp_path):
    m3_export_or_skip()
    result = run_tool("-m", "export.build_engine", "--pipeline", m3_spec(tmp_path))
    assert result.returncode == EXIT_UNAVAILABLE, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert "TensorRT is not installed" in line and result.stdout == ""


def test_start_up_serves_a_matching_bge_m3_plan_without_building(tmp_path, fake_server):
    gpu_startup, found = fake_server
    m3_export_or_skip()
    from splade_triton.artifacts.files import file_sha256
    from splade_triton.artifacts.provenance import provenance_path

    spec = m3_spec(tmp_path)
    settings = GpuPipeline.load(spec)
    plan = plan_folder(tmp_path / "engines", found) / "model.plan"
    plan.parent.mkdir(parents=True)
    plan.write_bytes(b"a plan")
    profile = engine_profile(settings.shapes).as_dict()
    provenance = {"format": 1, "tensorrt_version": "10.8.0.43", "gpu": found["gpu"],
                  **expected_provenance(file_sha256(settings.onnx), profile, "fp16", DEFAULT_FP32["bge_m3"])}
    provenance_path(plan).write_text(json.dumps(provenance))
    out = tmp_path / "repository"
    assert prepare(gpu_startup, "--pipeline", spec, "--engines", tmp_path / "engines", "--output", out, "--build", "never") == 0
    assert (out / "bge_m3_encoder" / "1" / "model.plan").read_bytes() == b"a plan"
    assert read_config(out / "bge_m3_encoder" / "config.pbtxt").platform == "tensorrt_plan"


def test_bge_m3_gpu_tokenizer_and_lexical_configs_serve_the_cpu_outputs(tmp_path, bge_m3_server, bge_m3_repository):
    """The bge_m3 GPU repository with the CPU encoder in the engine's place: the
    tokenizer's 32-token buckets and the host-side lexical step serve what the
    CPU pipeline serves (dense, lexical weights, ColBERT rows), whatever the
    requests' lengths and input_type."""
    m3_export_or_skip()
    from tests import triton

    gpu = assemble(tmp_path / "repository", [bge_m3_pipeline()], device="gpu")
    shutil.rmtree(gpu / "bge_m3_encoder")
    shutil.copytree(bge_m3_repository / "bge_m3_encoder", gpu / "bge_m3_encoder", ignore=shutil.ignore_patterns("__pycache__"))
    outputs = ("dense", "indices", "values", "colbert", "colbert_lengths")

    def infer(server, texts, input_type):
        c = triton.client("grpc", server)
        mod = triton.PROTOCOLS["grpc"]
        answer = c.infer("bge_m3_colbert", [triton.text_input("grpc", texts)], outputs=[mod.InferRequestedOutput(n) for n in outputs],
                         parameters={"input_type": input_type})
        return {n: answer.as_numpy(n) for n in outputs}

    jobs = [([t], kind) for t in VARIED_TEXTS[:12] for kind in ("query", "document")] + [(VARIED_TEXTS[:5], "document")]
    server = Server(gpu, tmp_path / "server.log")
    try:
        server.wait_ready()
        served = triton.client("grpc", server).get_model_config("bge_m3_tokenizer").config.parameters
        assert served["pad_to_multiple_of"].string_value == "32"
        with ThreadPoolExecutor(8) as pool:
            got = list(pool.map(lambda job: infer(server, *job), jobs))
    finally:
        server.stop()
    for (texts, kind), answer in zip(jobs, got):
        want = infer(bge_m3_server, texts, kind)
        np.testing.assert_allclose(answer["dense"], want["dense"], rtol=0, atol=1e-5)
        np.testing.assert_array_equal(answer["indices"], want["indices"])
        np.testing.assert_allclose(answer["values"], want["values"], rtol=0, atol=1e-5)
        np.testing.assert_array_equal(answer["colbert_lengths"], want["colbert_lengths"])
        assert answer["colbert"].shape[1] % 32 == 31 or answer["colbert"].shape[1] == want["colbert"].shape[1]
        for r, (n,) in enumerate(want["colbert_lengths"]):
            np.testing.assert_allclose(answer["colbert"][r, :n], want["colbert"][r, :n], rtol=0, atol=1e-5)
            assert not answer["colbert"][r, n:].any()


def test_a_gpu_repository_refuses_a_model_with_its_own_query_encoder(tmp_path):
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"not a real plan")
    for folder in ("splade-router-tiny", "splade-pair-tiny"):
        pipeline = Pipeline("asym", "splade", ROOT / "build" / "models" / folder)
        with pytest.raises(ValueError, match="the GPU variant serves one graph for both sides"):
            assemble(tmp_path / folder, [pipeline], device="gpu", plans={"asym": plan})
