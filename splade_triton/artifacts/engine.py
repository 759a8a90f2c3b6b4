"""TensorRT engine support that needs neither TensorRT nor a GPU to import.

- what is present: the GPU (through the NVIDIA driver's libcuda) and the
  TensorRT library Triton's backend runs, each probed with ctypes, so a
  missing piece is one line, not a traceback;
- provenance: what a plan was built with and for, written beside it, and the
  check that refuses a plan this server cannot run (``plan_problems``);
- which layers stay in FP32 in an FP16 engine (``select_fp32_layers``), a
  pure function over a layer graph, so the rule is tested on the real ONNX
  graph without TensorRT;
- ``python -m splade_triton.artifacts.engine prepare``: the GPU image's start-up step
  (find or build the plan for this GPU, assemble the repository).
"""

from __future__ import annotations

import argparse
import ctypes
import glob
import hashlib
import json
import os
import subprocess
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "DEFAULT_FP32_GROUPS",
    "EXIT_UNAVAILABLE",
    "FP16_MAX",
    "FP32_GROUPS",
    "PROVENANCE_FORMAT",
    "Layer",
    "Unavailable",
    "expected_provenance",
    "file_sha256",
    "layers_from_onnx",
    "missing_message",
    "plan_problems",
    "probe_gpu",
    "probe_tensorrt_library",
    "provenance_path",
    "read_provenance",
    "select_fp32_layers",
]

ROOT = Path(__file__).resolve().parents[1]

# Exit status of the GPU tools when TensorRT or a GPU is missing: nothing was
# done, and callers (the image's entrypoint, CI) can tell it from a failure.
EXIT_UNAVAILABLE = 3

PROVENANCE_FORMAT = 1
FP16_MAX = 65504.0

FP32_GROUPS = ("normalization", "softmax", "attention_mask", "pooling", "decoder")
# "decoder" (the vocabulary projection itself in FP32) is off by default: it is
# the largest matrix product of the model, ~15x slower without FP16 tensor
# cores, and its FP32 accumulation already happens in FP16 mode.
DEFAULT_FP32_GROUPS = ("normalization", "softmax", "attention_mask", "pooling")


class Unavailable(Exception):
    """TensorRT, the NVIDIA driver or a GPU is missing; the message says which."""


def missing_message(tool: str, problems: list[str]) -> str:
    """One line saying what ``tool`` lacks to run here."""
    return f"{tool}: cannot run here: {'; '.join(problems)}. Run it in the GPU image (docker/) or on a machine with both (docs/gpu.md)."


# --- what is present -----------------------------------------------------------

_CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75
_CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR = 76
_CUDA_ERROR_NO_DEVICE = 100


def probe_gpu(index: int = 0) -> dict:
    """Name, compute capability, memory and driver of CUDA device ``index``.

    Asks the NVIDIA driver directly (libcuda), so it works without torch,
    TensorRT or the CUDA runtime. Raises Unavailable with a one-line reason.
    """
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        raise Unavailable("no NVIDIA driver (libcuda.so.1 not found), so no CUDA GPU is visible") from None
    rc = cuda.cuInit(0)
    if rc == _CUDA_ERROR_NO_DEVICE:
        raise Unavailable("no CUDA GPU is visible (the NVIDIA driver reports no device)")
    if rc != 0:
        raise Unavailable(f"the NVIDIA driver failed to initialise (cuInit error {rc})")
    count = ctypes.c_int(0)
    if cuda.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value == 0:
        raise Unavailable("no CUDA GPU is visible")
    if not 0 <= index < count.value:
        raise Unavailable(f"CUDA device {index} does not exist ({count.value} visible)")
    device = ctypes.c_int(0)
    cuda.cuDeviceGet(ctypes.byref(device), index)
    name = ctypes.create_string_buffer(256)
    cuda.cuDeviceGetName(name, 256, device)
    major, minor = ctypes.c_int(0), ctypes.c_int(0)
    cuda.cuDeviceGetAttribute(ctypes.byref(major), _CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, device)
    cuda.cuDeviceGetAttribute(ctypes.byref(minor), _CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, device)
    memory = ctypes.c_size_t(0)
    cuda.cuDeviceTotalMem_v2(ctypes.byref(memory), device)
    driver = ctypes.c_int(0)
    cuda.cuDriverGetVersion(ctypes.byref(driver))
    return {
        "index": index,
        "name": name.value.decode(errors="replace"),
        "compute_capability": f"{major.value}.{minor.value}",
        "memory_bytes": int(memory.value),
        "cuda_driver_version": f"{driver.value // 1000}.{driver.value % 1000 // 10}",
    }


def decode_tensorrt_version(value: int) -> str:
    """getInferLibVersion()'s integer as major.minor.patch.

    TensorRT 10 encodes major*10000 + minor*100 + patch; earlier releases
    major*1000 + minor*100 + patch.
    """
    if value >= 100000:
        return f"{value // 10000}.{value % 10000 // 100}.{value % 100}"
    return f"{value // 1000}.{value % 1000 // 100}.{value % 100}"


def _libnvinfer_candidates() -> list[str]:
    explicit = os.environ.get("SPLADE_LIBNVINFER")
    if explicit:
        return [explicit]
    # The dynamic loader's search first (what Triton's TensorRT backend links),
    # then the backend's own folder.
    names = ["libnvinfer.so.10", "libnvinfer.so.11", "libnvinfer.so"]
    return names + sorted(glob.glob("/opt/tritonserver/backends/tensorrt/libnvinfer.so.*"))


def probe_tensorrt_library() -> dict:
    """Version and file of the TensorRT library this process would load.

    Run it in a process that has not imported the ``tensorrt`` Python package
    (which loads its own copy): in the GPU image that is the library Triton's
    TensorRT backend uses. Raises Unavailable when none is found.
    """
    for candidate in _libnvinfer_candidates():
        try:
            lib = ctypes.CDLL(candidate)
        except OSError:
            continue
        lib.getInferLibVersion.restype = ctypes.c_int32
        version = decode_tensorrt_version(int(lib.getInferLibVersion()))
        return {"version": version, "library": candidate}
    raise Unavailable("TensorRT is not installed (no libnvinfer found; set SPLADE_LIBNVINFER to its path)")


# --- provenance and the serve-time check ---------------------------------------


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def provenance_path(plan: Path) -> Path:
    """Where a plan's provenance lives: beside it, ``<plan>.json``."""
    return Path(str(plan) + ".json")


def read_provenance(plan: Path) -> dict:
    """The provenance written beside ``plan``; ValueError if absent or unreadable."""
    path = provenance_path(plan)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{path} is missing: a plan without provenance cannot be checked; rebuild it") from None
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read {path}: {e}") from None
    if not isinstance(data, dict) or data.get("format") != PROVENANCE_FORMAT:
        raise ValueError(f"{path} is not a provenance file of format {PROVENANCE_FORMAT}")
    return data


def expected_provenance(onnx_sha256: str, profile: dict, precision: str, fp32_groups) -> dict:
    """What a plan must have been built from to serve the current settings."""
    return {
        "onnx_sha256": onnx_sha256,
        "profile": profile,
        "precision": precision,
        "fp32_groups": sorted(fp32_groups) if precision == "fp16" else [],
    }


def _release(version: str) -> tuple[int, ...]:
    # Plans are tied to a TensorRT release (major.minor.patch); the fourth
    # component is a build number.
    return tuple(int(p) for p in str(version).split(".")[:3] if p.isdigit())


def plan_problems(provenance: dict, runtime: dict, expected: dict | None = None) -> list[str]:
    """Why a plan cannot (or should not) serve here; empty when it can.

    ``runtime``: {"tensorrt_version": "10.8.0", "gpu": {"name", "compute_capability"}},
    what this server runs. ``expected``: from ``expected_provenance``; a
    difference there means the plan was built from another graph or settings.
    A plan runs only on the TensorRT release and the GPU compute capability
    it was built for: anything else fails to deserialize, so it is refused
    here first, with the reason.
    """
    problems = []
    built_trt, run_trt = provenance.get("tensorrt_version"), runtime.get("tensorrt_version")
    if not built_trt:
        problems.append("its provenance does not say which TensorRT built it")
    elif run_trt and _release(built_trt) != _release(run_trt):
        problems.append(
            f"it was built with TensorRT {built_trt} but this server runs TensorRT {run_trt} "
            f"(a plan runs only on the TensorRT release that built it)"
        )
    built_gpu, run_gpu = provenance.get("gpu") or {}, runtime.get("gpu") or {}
    built_cc, run_cc = built_gpu.get("compute_capability"), run_gpu.get("compute_capability")
    if not built_cc:
        problems.append("its provenance does not say which GPU it was built for")
    elif run_cc and built_cc != run_cc:
        problems.append(
            f"it was built for compute capability {built_cc} ({built_gpu.get('name', 'unknown GPU')}) "
            f"but this GPU, {run_gpu.get('name', 'unknown')}, is {run_cc} "
            f"(a plan runs only on the GPU family it was built for)"
        )
    for key, what in (("onnx_sha256", "ONNX graph"), ("profile", "optimization profile"),
                      ("precision", "precision"), ("fp32_groups", "set of FP32 layers")):
        if expected is not None and key in expected and provenance.get(key) != expected[key]:
            problems.append(f"it was built for another {what} ({provenance.get(key)!r}, now {expected[key]!r})")
    return problems


# --- which layers stay in FP32 ---------------------------------------------------


@dataclass(frozen=True)
class Layer:
    """One layer of a network graph, as much as the FP32 selection needs."""

    name: str
    kind: str  # normalization, softmax, matmul, reduce, constant, elementwise, select, ... other
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    float_outputs: tuple[bool, ...] = ()  # per output: FP32/FP16 (precision applies) or not
    constant_absmax: float | None = None  # constants: largest magnitude (inf allowed)

    @property
    def has_float_output(self) -> bool:
        return any(self.float_outputs)


@dataclass
class Fp32Selection:
    """Layers to compute in FP32 (by group) and layers whose output only is FP32."""

    groups: dict[str, list[str]] = field(default_factory=dict)
    output_only: list[str] = field(default_factory=list)

    def compute(self) -> list[str]:
        seen, names = set(), []
        for group in self.groups.values():
            for name in group:
                if name not in seen:
                    seen.add(name)
                    names.append(name)
        return names

    def summary(self) -> dict:
        """Counts per group, as recorded in the provenance."""
        return {**{g: len(n) for g, n in self.groups.items()}, "fp32_output_only": len(self.output_only)}


def select_fp32_layers(layers: list[Layer], network_outputs, groups=DEFAULT_FP32_GROUPS) -> Fp32Selection:
    """The layers an FP16 engine keeps in FP32, by group.

    - normalization: every LayerNorm (its variance overflows FP16 easily);
    - softmax: every softmax (exp and the sum over up to 512 keys);
    - attention_mask: the additive attention mask, from a constant beyond
      FP16's range (transformers uses float32's lowest, -3.4e38) to where it
      is added to the scores, so it is never rounded to -inf or clamped;
    - pooling: the graph's tail from the output back to the vocabulary
      projection (the max over tokens and the bias add, FP32 in and out), and
      that projection's output type, so logits are not rounded to FP16 before
      the max (log1p(relu(.)) then runs in FP32 in the sparsify model);
    - decoder: the vocabulary projection computed in FP32 as well.

    Raises ValueError when a requested group finds nothing, so a differently
    shaped graph fails the build instead of silently running in FP16.
    """
    unknown = set(groups) - set(FP32_GROUPS)
    if unknown:
        raise ValueError(f"unknown FP32 group(s) {', '.join(sorted(unknown))}; known: {', '.join(FP32_GROUPS)}")
    by_name = {layer.name: layer for layer in layers}
    producer = {out: layer for layer in layers for out in layer.outputs}
    consumers = defaultdict(list)
    for layer in layers:
        for tensor in layer.inputs:
            consumers[tensor].append(layer)
    selection = Fp32Selection()

    def floats(names):
        return [n for n in names if by_name[n].has_float_output]

    if "normalization" in groups:
        selection.groups["normalization"] = [l.name for l in layers if l.kind == "normalization"]
    if "softmax" in groups:
        selection.groups["softmax"] = [l.name for l in layers if l.kind == "softmax"]
    if "attention_mask" in groups:
        seeds = [l for l in layers if l.kind == "constant" and l.constant_absmax is not None and l.constant_absmax > FP16_MAX]
        region, stack = [], list(seeds)
        seen = {l.name for l in seeds}
        while stack:
            layer = stack.pop()
            region.append(layer.name)
            for out in layer.outputs:
                for nxt in consumers[out]:
                    # Stop where the bias has been consumed: softmax (itself
                    # FP32), a normalization, or a matrix product.
                    if nxt.name in seen or nxt.kind in ("softmax", "normalization", "matmul"):
                        continue
                    seen.add(nxt.name)
                    stack.append(nxt)
        selection.groups["attention_mask"] = floats(sorted(region, key=list(by_name).index))
    if "pooling" in groups or "decoder" in groups:
        tail, projections, stack, seen = [], [], [], set()
        for out in network_outputs:
            if out in producer:
                stack.append(producer[out])
        while stack:
            layer = stack.pop()
            if layer.name in seen:
                continue
            seen.add(layer.name)
            if layer.kind == "matmul":
                projections.append(layer.name)
                continue
            if layer.kind in ("normalization", "softmax"):
                raise ValueError(f"no matrix product between the output and {layer.kind} layer {layer.name!r}: unexpected graph")
            tail.append(layer.name)
            stack.extend(producer[t] for t in layer.inputs if t in producer)
        if not projections or len(tail) > 32:
            raise ValueError("the pooling tail (output back to the vocabulary projection) was not found: unexpected graph")
        order = list(by_name).index
        if "pooling" in groups:
            selection.groups["pooling"] = floats(sorted(tail, key=order))
            selection.output_only = sorted(projections, key=order)
        if "decoder" in groups:
            selection.groups["decoder"] = sorted(projections, key=order)
            selection.output_only = []
    empty = [g for g, names in selection.groups.items() if not names]
    if empty:
        raise ValueError(f"no layer found for FP32 group(s) {', '.join(empty)}: unexpected graph")
    return selection


_ONNX_KINDS = {
    "LayerNormalization": "normalization",
    "Softmax": "softmax",
    "MatMul": "matmul",
    "Gemm": "matmul",
    "ReduceMax": "reduce",
    "ReduceMean": "reduce",
    "ReduceSum": "reduce",
    "Constant": "constant",
    "Where": "select",
    "Add": "elementwise",
    "Sub": "elementwise",
    "Mul": "elementwise",
    "Div": "elementwise",
}


def layers_from_onnx(model) -> tuple[list[Layer], list[str]]:
    """The layer graph of an ONNX model (initializers as constant layers).

    TensorRT's parser maps ONNX nodes to layers nearly one to one (named after
    the nodes), so the selection computed here is what an engine build pins;
    ``export/build_engine.py --dry-run`` prints it.
    """
    import numpy as np
    import onnx
    from onnx import numpy_helper

    inferred = onnx.shape_inference.infer_shapes(model)
    graph = inferred.graph
    float_types = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE}
    elem = {v.name: v.type.tensor_type.elem_type for v in [*graph.value_info, *graph.input, *graph.output]}

    def absmax(array):
        array = np.asarray(array)
        if array.dtype.kind != "f" or array.size == 0:
            return None, False
        return float(np.abs(array).max()), True

    layers = []
    for init in graph.initializer:
        value, is_float = absmax(numpy_helper.to_array(init))
        layers.append(Layer(init.name, "constant", (), (init.name,), (is_float,), value))
    for node in graph.node:
        if node.op_type == "Constant":
            value, is_float = absmax(numpy_helper.to_array(node.attribute[0].t)) if node.attribute[0].t.ByteSize() else (None, False)
            layers.append(Layer(node.name or node.output[0], "constant", (), tuple(node.output), (is_float,), value))
            continue
        kind = _ONNX_KINDS.get(node.op_type, node.op_type.lower())
        outputs = tuple(node.output)
        layers.append(Layer(node.name, kind, tuple(i for i in node.input if i), outputs,
                            tuple(elem.get(o) in float_types for o in outputs)))
    return layers, [o.name for o in graph.output]


# --- start-up step of the GPU image -----------------------------------------------


def _runtime() -> dict:
    """What this server runs: TensorRT library and GPU; Unavailable names all that is missing."""
    found, problems = {}, []
    for key, probe in (("tensorrt_version", lambda: probe_tensorrt_library()["version"]),
                       # Device 0 of those visible: choose with CUDA_VISIBLE_DEVICES.
                       ("gpu", lambda: probe_gpu(0))):
        try:
            found[key] = probe()
        except Unavailable as e:
            problems.append(str(e))
    if problems:
        raise Unavailable("; ".join(problems))
    return found


def _check(args) -> int:
    try:
        runtime = _runtime()
        provenance = read_provenance(args.plan)
    except Unavailable as e:
        print(missing_message("engine check", [str(e)]), file=sys.stderr)
        return EXIT_UNAVAILABLE
    except ValueError as e:
        print(f"refusing TensorRT plan {args.plan}: {e}", file=sys.stderr)
        return 1
    problems = plan_problems(provenance, runtime)
    if problems:
        print(f"refusing TensorRT plan {args.plan}: {'; '.join(problems)}. Rebuild it for this server "
              f"(export/build_engine.py, or start the image with SPLADE_BUILD_ENGINE=auto).", file=sys.stderr)
        return 1
    print(f"plan {args.plan} matches TensorRT {runtime['tensorrt_version']} on {runtime['gpu']['name']} "
          f"(compute capability {runtime['gpu']['compute_capability']})")
    return 0


def _prepare(args) -> int:
    """Find or build the plan for this GPU, then assemble the GPU repository."""
    from splade_triton.artifacts.repository import assemble, model_configs
    from splade_triton.artifacts.shapes import Shapes, engine_profile

    try:
        runtime = _runtime()
    except Unavailable as e:
        print(missing_message("splade-triton GPU start-up", [str(e)]), file=sys.stderr)
        return EXIT_UNAVAILABLE
    gpu = runtime["gpu"]
    configs = model_configs(args.source, "gpu", args.overlay, args.queue_delay_us)
    profile = engine_profile(Shapes.from_configs(configs), args.opt_batch, args.opt_seq)
    onnx_path = args.onnx or args.source / "encoder" / "1" / "model.onnx"
    if not onnx_path.is_file():
        print(f"splade-triton GPU start-up: ONNX model not found: {onnx_path} (export it with export/export_onnx.py)", file=sys.stderr)
        return 1
    groups = [g for g in args.fp32.split(",") if g] if args.precision == "fp16" else []
    expected = expected_provenance(file_sha256(onnx_path), profile.as_dict(), args.precision, groups)
    # One folder per TensorRT release and GPU family, so a volume shared by
    # several kinds of GPU keeps a plan for each.
    plan_dir = args.engines / f"trt{runtime['tensorrt_version']}-sm{gpu['compute_capability']}"
    plan = plan_dir / "model.plan"
    problems = ["there is none"]
    if plan.is_file():
        try:
            problems = plan_problems(read_provenance(plan), runtime, expected)
        except ValueError as e:
            problems = [str(e)]
    if problems:
        reason = "; ".join(problems)
        if args.build == "never":
            print(f"splade-triton GPU start-up: no usable TensorRT plan in {plan_dir}: {reason}; "
                  f"SPLADE_BUILD_ENGINE=never forbids building one", file=sys.stderr)
            return 1
        print(f"splade-triton: building a TensorRT plan for {gpu['name']} ({reason})", file=sys.stderr, flush=True)
        plan_dir.mkdir(parents=True, exist_ok=True)
        build = [sys.executable, str(args.export_dir / "build_engine.py"), "--onnx", str(onnx_path),
                 "--output", str(plan), "--repository", str(args.source), "--precision", args.precision,
                 "--fp32", args.fp32]
        if args.overlay is not None:
            build += ["--overlay", str(args.overlay)]
        if args.opt_batch is not None:
            build += ["--opt-batch", str(args.opt_batch)]
        if args.opt_seq is not None:
            build += ["--opt-seq", str(args.opt_seq)]
        status = subprocess.call(build)
        if status != 0:
            return status
        if args.validate_texts > 0:
            validate = [sys.executable, str(args.export_dir / "validate_engine.py"), "--plan", str(plan),
                        "--onnx", str(onnx_path), "--repository", str(args.source), "--texts", str(args.validate_texts),
                        "--record"]
            if args.overlay is not None:
                validate += ["--overlay", str(args.overlay)]
            status = subprocess.call(validate)
            if status != 0:
                # A plan that failed validation must not be picked up by the next start.
                plan.rename(plan.with_suffix(".rejected"))
                return status
        problems = plan_problems(read_provenance(plan), runtime, expected)
        if problems:
            print(f"splade-triton GPU start-up: the new plan does not match: {'; '.join(problems)}", file=sys.stderr)
            return 1
    else:
        print(f"splade-triton: using the TensorRT plan in {plan_dir} (built for {gpu['name']})", file=sys.stderr)
    assemble(args.output, "gpu", args.source, args.overlay, plan, args.queue_delay_us)
    print(f"splade-triton: GPU repository ready in {args.output}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("probe", help="print the GPU and TensorRT library this process sees")

    check = sub.add_parser("check", help="refuse a plan this server cannot run (TensorRT release, GPU family)")
    check.add_argument("--plan", type=Path, required=True)

    prep = sub.add_parser("prepare", help="find or build the plan for this GPU, then assemble the GPU repository")
    prep.add_argument("--source", type=Path, default=ROOT / "model_repository")
    prep.add_argument("--overlay", type=Path, default=None)
    prep.add_argument("--onnx", type=Path, default=None, help="default: <source>/encoder/1/model.onnx")
    prep.add_argument("--engines", type=Path, required=True, help="folder (a volume) keeping plans across restarts")
    prep.add_argument("--output", type=Path, required=True, help="the repository to assemble")
    prep.add_argument("--export-dir", type=Path, default=ROOT / "export")
    prep.add_argument("--precision", choices=("fp16", "fp32"), default="fp16")
    prep.add_argument("--fp32", default=",".join(DEFAULT_FP32_GROUPS), help="FP32 groups of an FP16 engine")
    prep.add_argument("--opt-batch", type=int, default=None)
    prep.add_argument("--opt-seq", type=int, default=None)
    prep.add_argument("--build", choices=("auto", "never"), default="auto")
    prep.add_argument("--validate-texts", type=int, default=300, help="validate a new plan on this many texts (0: skip)")
    prep.add_argument("--queue-delay-us", type=int, default=None)
    args = parser.parse_args(argv)

    if args.command == "probe":
        found = {}
        for key, probe in (("gpu", lambda: probe_gpu()), ("tensorrt_library", probe_tensorrt_library)):
            try:
                found[key] = probe()
            except Unavailable as e:
                found[key] = {"unavailable": str(e)}
        print(json.dumps(found, indent=2))
        sys.exit(0 if all("unavailable" not in v for v in found.values()) else EXIT_UNAVAILABLE)
    if args.command == "check":
        sys.exit(_check(args))
    try:
        sys.exit(_prepare(args))
    except (ValueError, FileNotFoundError) as e:
        print(f"splade-triton GPU start-up: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
