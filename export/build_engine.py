"""Compile a pipeline's exported ONNX graph (SPLADE or BGE-M3) to a TensorRT plan for this GPU.

The optimization profile comes from the pipeline's GPU settings
(splade_triton/artifacts/shapes.py): batch 1..the encoder's max_batch_size, sequence
1..the tokenizer's max_length (BGE-M3: its document_max_length), opt at a full
batch of 128-token texts (why: engine_profile's docstring, docs/gpu.md). The
engine's inputs and outputs are the GPU encoder config's; one the graph lacks
(BGE-M3's colbert_lengths) is added to it first (gpu_pipeline.engine_graph).
FP16 by default, with LayerNorm, softmax and the attention-mask bias kept in
FP32, and per kind the tail that must not round: SPLADE's pooling (max over
tokens, bias), BGE-M3's heads (L2 norms, relu(sparse_linear)); ``--precision
fp32`` for a full-FP32 engine (TF32 off unless ``--tf32``). A timing cache
beside the plan makes rebuilds fast.

Writes ``<output>`` and ``<output>.json``, the provenance: TensorRT version,
GPU name and compute capability, profile, precision, the ONNX file's hash.
A plan runs only on the TensorRT release and GPU family that built it;
``python -m splade_triton.artifacts.gpu_startup check`` refuses any other.

Needs the ``tensorrt`` Python package and a CUDA GPU (the GPU image has
both); without them it exits at once, status 3, with one line saying what
is missing. ``--dry-run`` needs neither: it prints the profile and the
layers an FP16 build would keep in FP32, read from the ONNX graph.

    python -m export.build_engine                       # build/engine/model.plan
    python -m export.build_engine --precision fp32 --output build/engine-fp32/model.plan
    python -m export.build_engine --dry-run
    python -m export.build_engine --pipeline pipelines/bge_m3.toml --dry-run   # another pipeline's model and settings
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from splade_triton.artifacts.fp32_layers import FP32_GROUPS, Fp32Selection, Layer, layers_from_onnx, select_fp32_layers
from splade_triton.artifacts.gpu_probe import require_tensorrt
from splade_triton.artifacts.files import file_sha256
from splade_triton.artifacts.provenance import PROVENANCE_FORMAT, provenance_path
from splade_triton.artifacts.gpu_pipeline import DEFAULT_SPEC, GpuPipeline, engine_graph
from splade_triton.artifacts.repository import ROOT
from splade_triton.artifacts.shapes import ENCODER_INPUTS, Shapes, engine_profile


class BuildError(Exception):
    pass


# Groups of this module on top of fp32_layers' (FP32_GROUPS).
HEADS = "heads"
GROUPS = (*FP32_GROUPS, HEADS)


def head_layers(layers: list[Layer], network_outputs) -> list[str]:
    """BGE-M3's heads: from each output back to the last matrix product or
    normalization (not included), the float layers on the way.

    dense is h[:, 0] / ||h[:, 0]|| after the final LayerNorm, colbert
    colbert_linear(h[:, 1:]) masked and L2-normalised, token_weights
    relu(sparse_linear(h)) masked: the L2 norms sum 1024 squares (beyond
    FP16's 65504 for hidden states of magnitude ~8), so the whole tail stays
    in FP32. Raises ValueError when an output has no such tail (an
    unexpected graph) or a tail is implausibly long.
    """
    producer = {out: layer for layer in layers for out in layer.outputs}
    order = {layer.name: i for i, layer in enumerate(layers)}
    found: set[str] = set()
    for output in network_outputs:
        tail, stack, seen, stops = [], [producer[output]] if output in producer else [], set(), 0
        while stack:
            layer = stack.pop()
            if layer.name in seen:
                continue
            seen.add(layer.name)
            if layer.kind in ("matmul", "normalization"):
                stops += 1
                continue
            if layer.kind == "constant":
                continue
            tail.append(layer)
            stack.extend(producer[t] for t in layer.inputs if t in producer)
        if len(tail) > 64:
            raise ValueError(f"the head of output {output!r} was not found (over 64 layers): unexpected graph")
        found.update(layer.name for layer in tail if layer.has_float_output)
        if not stops and output != "colbert_lengths":
            raise ValueError(f"output {output!r} does not come from a matrix product or normalization: unexpected graph")
    return sorted(found, key=order.__getitem__)


def select_layers(layers: list[Layer], network_outputs, groups) -> Fp32Selection:
    """fp32_layers.select_fp32_layers, plus the ``heads`` group of this module."""
    unknown = set(groups) - set(GROUPS)
    if unknown:
        raise ValueError(f"unknown FP32 group(s) {', '.join(sorted(unknown))}; known: {', '.join(GROUPS)}")
    selection = select_fp32_layers(layers, network_outputs, [g for g in groups if g != HEADS])
    if HEADS in groups:
        selection.groups[HEADS] = head_layers(layers, network_outputs)
    return selection


def _layer_kinds(trt) -> dict:
    names = {
        "NORMALIZATION": "normalization",
        "SOFTMAX": "softmax",
        "MATRIX_MULTIPLY": "matmul",
        "REDUCE": "reduce",
        "CONSTANT": "constant",
        "ELEMENTWISE": "elementwise",
        "SELECT": "select",
    }
    return {getattr(trt.LayerType, k): v for k, v in names.items() if hasattr(trt.LayerType, k)}


def _constant_absmax(trt, layer) -> float | None:
    import numpy as np

    layer.__class__ = trt.IConstantLayer  # the Python API hands out the ILayer base
    weights = layer.weights
    array = weights.numpy() if hasattr(weights, "numpy") else np.asarray(weights)
    if array.dtype.kind != "f" or array.size == 0:
        return None
    return float(np.abs(array).max())


def network_layers(trt, network) -> tuple[list[Layer], list[str], dict]:
    """The parsed network as the pure ``Layer`` graph, its outputs, and name -> ILayer index."""
    kinds = _layer_kinds(trt)
    floats = {trt.float32, trt.float16}
    layers, index = [], {}
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        kind = kinds.get(layer.type, "other")
        name = layer.name if layer.name not in index else f"{layer.name}#{i}"
        inputs = tuple(t.name for t in (layer.get_input(j) for j in range(layer.num_inputs)) if t is not None)
        outs = [layer.get_output(j) for j in range(layer.num_outputs)]
        absmax = _constant_absmax(trt, layer) if kind == "constant" else None
        layers.append(Layer(name, kind, inputs, tuple(t.name for t in outs), tuple(t.dtype in floats for t in outs), absmax))
        index[name] = i
    outputs = [network.get_output(i).name for i in range(network.num_outputs)]
    return layers, outputs, index


def pin_fp32(trt, network, selection, index) -> None:
    """Apply the selection: FP32 compute and outputs; FP32 outputs only for ``output_only``."""
    floats = {trt.float32, trt.float16}
    for name in selection.compute():
        layer = network.get_layer(index[name])
        if layer.type != trt.LayerType.CONSTANT:  # a constant has no computation, only its output type
            layer.precision = trt.float32
        if layer.type == trt.LayerType.NORMALIZATION:
            layer.__class__ = trt.INormalizationLayer  # to reach its accumulation precision
            layer.compute_precision = trt.float32
        for j in range(layer.num_outputs):
            if layer.get_output(j).dtype in floats:
                layer.set_output_type(j, trt.float32)
    for name in selection.output_only:
        layer = network.get_layer(index[name])
        for j in range(layer.num_outputs):
            layer.set_output_type(j, trt.float32)


def _parser_error(error) -> str:
    if hasattr(error, "desc"):
        return f"node {error.node()}: {error.desc()}"
    return str(error)


def _check_io(network, expected_outputs) -> None:
    inputs = [network.get_input(i).name for i in range(network.num_inputs)]
    outputs = [network.get_output(i).name for i in range(network.num_outputs)]
    if sorted(inputs) != sorted(ENCODER_INPUTS) or sorted(outputs) != sorted(expected_outputs):
        raise BuildError(f"unexpected graph signature: inputs {inputs}, outputs {outputs}; "
                         f"expected {list(ENCODER_INPUTS)} -> {list(expected_outputs)} (python -m export.export_onnx)")


def build(trt, args, profile, gpu, gpu_pipeline: GpuPipeline, graph: Path) -> dict:
    """Build ``graph`` (the export, or engine_graph's copy), write the plan and its timing cache; return the provenance."""
    started = time.time()
    logger = trt.Logger(trt.Logger.VERBOSE if args.verbose else trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch: the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(graph)):
        errors = "; ".join(_parser_error(parser.get_error(i)) for i in range(parser.num_errors))
        raise BuildError(f"TensorRT could not parse {graph}: {errors}")
    _check_io(network, gpu_pipeline.outputs)

    config = builder.create_builder_config()
    if args.workspace_gib:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(args.workspace_gib * 2**30))
    config.builder_optimization_level = args.optimization_level
    trt_profile = builder.create_optimization_profile()
    for name in ENCODER_INPUTS:
        trt_profile.set_shape(name, profile.min, profile.opt, profile.max)
    config.add_optimization_profile(trt_profile)
    if not args.tf32:
        # TF32 rounds FP32 products to 10-bit mantissas, FP16's: an "FP32"
        # engine (and the FP32-pinned projection) would not be one.
        config.clear_flag(trt.BuilderFlag.TF32)

    groups = [g for g in args.fp32.split(",") if g]
    selection = None
    if args.precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
        # Obey, not prefer: a layer we pin to FP32 never silently runs in FP16.
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        layers, outputs, index = network_layers(trt, network)
        selection = select_layers(layers, outputs, groups)
        pin_fp32(trt, network, selection, index)
        print(f"FP32 layers in the FP16 engine: {json.dumps(selection.summary())}")

    cache_path = args.timing_cache or args.output.parent / f"timing-trt{trt.__version__}-sm{gpu['compute_capability']}.cache"
    cache_bytes = cache_path.read_bytes() if cache_path.is_file() else b""
    cache = config.create_timing_cache(cache_bytes)
    cache_loaded = bool(cache_bytes)
    if not config.set_timing_cache(cache, ignore_mismatch=False):
        print(f"warning: timing cache {cache_path} does not match this TensorRT / GPU; starting an empty one", file=sys.stderr)
        config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)
        cache_loaded = False

    print(f"building a {args.precision} engine for {gpu['name']} (sm {gpu['compute_capability']}), "
          f"profile min {profile.min} opt {profile.opt} max {profile.max} ...", flush=True)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BuildError("TensorRT failed to build the engine (its messages are above)")
    plan_bytes = bytes(memoryview(serialized))

    engine = trt.Runtime(logger).deserialize_cuda_engine(plan_bytes)
    if engine is None:
        raise BuildError("the built engine does not deserialize")
    io, engine_profiles = {}, {}
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        io[name] = str(engine.get_tensor_dtype(name)).rsplit(".", 1)[-1]
        if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
            shapes = engine.get_tensor_profile_shape(name, 0)
            engine_profiles[name] = {k: list(s) for k, s in zip(("min", "opt", "max"), shapes)}
    # The types Triton's GPU encoder config declares (the CPU encoder's).
    declared = {**gpu_pipeline.inputs, **gpu_pipeline.outputs}
    if io != declared:
        raise BuildError(f"engine I/O types {io} differ from the encoder config's {declared}")

    args.output.parent.mkdir(parents=True, exist_ok=True)
    partial = args.output.with_suffix(".partial")
    partial.write_bytes(plan_bytes)
    os.replace(partial, args.output)
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    cache_path.write_bytes(bytes(memoryview(config.get_timing_cache().serialize())))

    memory = getattr(engine, "device_memory_size_v2", None) or getattr(engine, "device_memory_size", None)
    return {
        "format": PROVENANCE_FORMAT,
        "tensorrt_version": trt.__version__,
        "gpu": gpu,
        "onnx_file": args.onnx.name,
        "onnx_sha256": file_sha256(args.onnx),
        "profile": profile.as_dict(),
        "engine_profile": engine_profiles,
        "precision": args.precision,
        "fp32_groups": sorted(groups) if args.precision == "fp16" else [],
        "fp32_layers": selection.summary() if selection else {},
        "tf32": bool(args.tf32),
        "io": io,
        "device_memory_bytes": int(memory) if memory else None,
        "plan_bytes": len(plan_bytes),
        "builder": {
            "optimization_level": args.optimization_level,
            "workspace_gib": args.workspace_gib,
            "timing_cache": cache_path.name,
            "timing_cache_loaded": cache_loaded,
        },
        "built_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "build_seconds": round(time.time() - started, 1),
    }


def refuse_fused_attention(onnx_path: Path) -> None:
    """The engine is built from the unfused attention (MatMul/Softmax, its softmax pinned to FP32);
    the image's TensorRT 10.8 cannot parse ONNX Attention ops (from 10.14 it can), which BGE-M3's
    CPU export (opset 23) has."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    if any(node.op_type == "Attention" for node in graph.node):
        raise BuildError(f"{onnx_path} computes attention with ONNX Attention ops (opset 23: the CPU export, whose "
                         "OpenVINO attention is linear in memory); the engine is built from the unfused graph: export "
                         "the model for it with python -m export.export_onnx --opset 18 --output DIR and name DIR in "
                         "the pipeline spec")


def dry_run(args, shapes: Shapes, profile, gpu_pipeline: GpuPipeline, graph: Path) -> None:
    import onnx

    layers, outputs = layers_from_onnx(onnx.load(str(graph), load_external_data=False))
    groups = [g for g in args.fp32.split(",") if g]
    selection = select_layers(layers, outputs, groups) if args.precision == "fp16" else None
    print(json.dumps({
        "pipeline": {"name": gpu_pipeline.pipeline.name, "kind": gpu_pipeline.pipeline.kind},
        "engine_outputs": gpu_pipeline.outputs,
        "settings": asdict(shapes),
        "tokenizer_buckets": shapes.buckets(),
        "profile": profile.as_dict(),
        "precision": args.precision,
        "fp32_layers": selection.groups if selection else {},
        "fp32_output_only": selection.output_only if selection else [],
    }, indent=2))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m export.build_engine", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipeline", type=Path, default=DEFAULT_SPEC,
                        help="pipeline spec: its model directory and GPU settings (profile)")
    parser.add_argument("--onnx", type=Path, default=None, help="default: <the pipeline's model directory>/model.onnx")
    parser.add_argument("--output", type=Path, default=ROOT / "build" / "engine" / "model.plan")
    parser.add_argument("--precision", choices=("fp16", "fp32"), default="fp16")
    parser.add_argument("--fp32", default=None,
                        help=f"layer groups an FP16 engine keeps in FP32, comma-separated, from {', '.join(GROUPS)}; "
                             "'' for none (default: the kind's, gpu_pipeline.DEFAULT_FP32)")
    parser.add_argument("--opt-batch", type=int, default=None, help="profile opt batch (default: max_batch_size)")
    parser.add_argument("--opt-seq", type=int, default=None, help="profile opt sequence length (default: 128)")
    parser.add_argument("--tf32", action="store_true", help="allow TF32 in FP32 layers (faster, 10-bit mantissa products)")
    parser.add_argument("--workspace-gib", type=float, default=None, help="builder workspace limit (default: TensorRT's)")
    parser.add_argument("--optimization-level", type=int, default=3, help="TensorRT builder optimization level 0-5")
    parser.add_argument("--timing-cache", type=Path, default=None, help="default: beside the plan, per TensorRT and GPU")
    parser.add_argument("--dry-run", action="store_true", help="print profile and FP32 layers from the ONNX graph; no TensorRT")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)

    trt, gpu = (None, None) if args.dry_run else require_tensorrt("build_engine")
    try:
        gpu_pipeline = GpuPipeline.load(args.pipeline, args.onnx)
        args.onnx, shapes = gpu_pipeline.onnx, gpu_pipeline.shapes
        if args.fp32 is None:
            args.fp32 = ",".join(gpu_pipeline.fp32_groups)
        profile = engine_profile(shapes, args.opt_batch, args.opt_seq)
        if not args.onnx.is_file():
            raise BuildError(f"ONNX model not found: {args.onnx} (export it with python -m export.export_onnx)")
        refuse_fused_attention(args.onnx)
        with tempfile.TemporaryDirectory(prefix="engine-graph-") as scratch:
            graph = engine_graph(args.onnx, gpu_pipeline.outputs, Path(scratch))
            if args.dry_run:
                dry_run(args, shapes, profile, gpu_pipeline, graph)
                return
            provenance = build(trt, args, profile, gpu, gpu_pipeline, graph)
    except (BuildError, ValueError) as e:
        raise SystemExit(f"build_engine: {e}") from None
    provenance["settings"] = asdict(shapes)
    provenance_path(args.output).write_text(json.dumps(provenance, indent=2) + "\n")
    print(f"wrote {args.output} ({provenance['plan_bytes'] / 2**20:.1f} MiB) and {provenance_path(args.output).name} "
          f"in {provenance['build_seconds']} s")


if __name__ == "__main__":
    main()
