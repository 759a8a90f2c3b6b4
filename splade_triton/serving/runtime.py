"""The encoder's inference runtime: ONNX Runtime or OpenVINO, at fp32, bf16 or int8.

Kept free of Triton imports so it is tested on its own. ``open_session``
returns an object with ONNX Runtime's interface as far as ``RaggedEncoder``
uses it (``get_inputs()``, ``get_outputs()``, ``run(names, feeds)``), so the
ragged batching is the same code for both runtimes.

- The graph is compiled once, at load, with dynamic batch and sequence
  dimensions: no new shape ever recompiles it (OpenVINO's CPU plugin adapts
  its kernels to a new shape inside the same compiled model).
- A precision the CPU cannot run fast is refused at load, naming the missing
  instruction set (from /proc/cpuinfo): emulated bf16 or int8 is slower than fp32.
- fp32 is exact fp32: OpenVINO's CPU plugin otherwise picks bf16 on CPUs
  that have it (``INFERENCE_PRECISION_HINT``), so it is always set.
"""

from __future__ import annotations

import os

import numpy as np

__all__ = [
    "RUNTIMES", "PRECISIONS", "ISA_FLAGS", "cpu_flags", "check_precision", "open_session", "OpenVINOSession",
    "model_file", "check_fidelity", "fused_attention",
]

RUNTIMES = ("onnxruntime", "openvino")
PRECISIONS = ("fp32", "bf16", "int8")

# /proc/cpuinfo flags any one of which runs the precision at hardware speed.
ISA_FLAGS = {
    "bf16": ("avx512_bf16", "amx_bf16"),
    "int8": ("avx512_vnni", "avx_vnni", "amx_int8"),
}

# The file each precision runs, in the encoder's version folder. int8 is a
# calibrated, statically quantized OpenVINO IR (python -m export.quantize).
INT8_FILE = "model.int8.xml"

_ORT_LEVELS = ("disable", "basic", "extended", "all")


def cpu_flags(path: str = "/proc/cpuinfo") -> frozenset[str]:
    """The CPU's ISA flags (the first processor's ``flags`` line); empty if unreadable."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def check_precision(runtime: str, precision: str, flags: frozenset[str] | set[str] | None = None) -> None:
    """Raise ValueError when ``runtime`` cannot run ``precision`` (fast) on this CPU."""
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp32":
        return
    if runtime != "openvino":
        raise ValueError(f"precision {precision} needs runtime openvino; onnxruntime serves fp32 only")
    flags = cpu_flags() if flags is None else flags
    wanted = ISA_FLAGS[precision]
    if not set(wanted) & set(flags):
        raise ValueError(
            f"precision {precision} refused: this CPU lacks the instruction set it needs "
            f"({' or '.join(wanted)} in /proc/cpuinfo flags); without it {precision} is emulated, "
            f"slower than fp32. Use precision fp32."
        )


def fused_attention(session) -> bool:
    """Whether ``session`` runs attention without materialising its scores (OpenVINO on an
    opset-23 graph). ONNX Runtime's CPU kernels hold them, for either opset."""
    return bool(getattr(session, "fused_attention", False))


def model_file(folder: str, onnx_file: str, precision: str) -> str:
    """The graph file a precision runs: the exported ONNX, or the quantized IR for int8."""
    return os.path.join(folder, INT8_FILE if precision == "int8" else onnx_file)


def check_fidelity(export_info_path: str, runtime: str, precision: str, enforce: bool = True) -> str | None:
    """Refuse a lower precision without a passing fidelity gate (python -m export.quantize,
    recorded in export_info.json ``precisions``): one that failed, or none recorded.

    fp32 needs no gate. ``enforce=False`` (fidelity_gate warn: benchmarks) serves it anyway
    and returns the warning to log.
    """
    if precision == "fp32":
        return None
    import json

    key = f"{runtime}_{precision}"
    try:
        with open(export_info_path, encoding="utf-8") as f:
            recorded = json.load(f).get("precisions", {}).get(key)
    except (OSError, ValueError):
        recorded = None
    if isinstance(recorded, dict) and recorded.get("gate") == "pass":
        return None
    if isinstance(recorded, dict) and recorded.get("gate") == "fail":
        message = (f"precision {precision} failed its fidelity gate against fp32 "
                   f"({'; '.join(recorded.get('failures', []))}; recorded in {export_info_path})")
    else:
        message = (f"precision {precision}: no fidelity gate recorded for {key} in {export_info_path} "
                   f"(run python -m export.quantize on the exported model)")
    if enforce:
        raise ValueError(message + "; serve fp32, or set fidelity_gate to warn")
    return message


class _Port:
    """An input or output as ONNX Runtime describes it (name, shape with None / ints)."""

    def __init__(self, name: str, shape: list):
        self.name, self.shape = name, shape

    def __repr__(self) -> str:
        return f"{self.name}{self.shape}"


def _shape(partial) -> list:
    return [d.get_length() if d.is_static else None for d in partial]


class OpenVINOSession:
    """An OpenVINO compiled model with ONNX Runtime's ``run(names, feeds)``.

    Compiled once here (``compile_count`` says how often: 1), with dynamic
    shapes; one infer request reused for every call (calls come from one
    thread: Triton runs one ``execute`` at a time per instance).
    """

    def __init__(self, path: str, precision: str = "fp32", threads: int = 0, core=None):
        import openvino as ov

        core = core or ov.Core()
        model = core.read_model(path)
        config = {
            # f32 is exact fp32 (the plugin's default is bf16 on bf16 CPUs);
            # int8: the quantized ops run int8, the rest fp32.
            "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
            "PERFORMANCE_HINT": "LATENCY",
            "NUM_STREAMS": "1",
            # Other models' processes (tokenizer, sparsify) share these cores:
            # no pinning, so OpenVINO's threads do not fight them for fixed cores.
            "ENABLE_CPU_PINNING": "NO",
        }
        if threads:
            config["INFERENCE_NUM_THREADS"] = str(threads)
        self.compiled = core.compile_model(model, "CPU", config)
        # An ONNX Attention op (opset 23) arrives as OpenVINO's fused SDPA: no [heads, L, L]
        # scores, memory linear in the length; MatMul/Softmax graphs keep the scores.
        self.fused_attention = any(op.get_type_name() == "ScaledDotProductAttention" for op in model.get_ordered_ops())
        self.compile_count = 1
        self.precision = precision
        hint = self.compiled.get_property("INFERENCE_PRECISION_HINT")
        self.inference_precision = hint.get_type_name() if hasattr(hint, "get_type_name") else str(hint)  # "f32", "bf16"
        self._request = self.compiled.create_infer_request()
        self._inputs = [_Port(p.get_any_name(), _shape(p.get_partial_shape())) for p in self.compiled.inputs]
        self._outputs = [_Port(p.get_any_name(), _shape(p.get_partial_shape())) for p in self.compiled.outputs]

    def get_inputs(self):
        return list(self._inputs)

    def get_outputs(self):
        return list(self._outputs)

    def run(self, names, feeds):
        names = [p.name for p in self._outputs] if names is None else list(names)
        # share_inputs: no copy of the int64 feeds; outputs are views into the
        # request's buffers, copied out only for the names asked for.
        self._request.infer({k: np.ascontiguousarray(v) for k, v in feeds.items()}, share_inputs=True,
                            share_outputs=True)
        return [np.array(self._request.get_tensor(name).data, copy=True) for name in names]


def open_session(path: str, runtime: str = "onnxruntime", precision: str = "fp32", threads: int = 0,
                 allow_spinning: bool = False, graph_optimization_level: str = "all",
                 flags: frozenset[str] | set[str] | None = None):
    """Load ``path`` for inference; raises ValueError with a message for the log on any refusal."""
    check_precision(runtime, precision, flags)
    if not os.path.isfile(path):
        hint = " (run python -m export.quantize on the exported model)" if precision == "int8" else \
            " (run python -m export.export_onnx)"
        raise FileNotFoundError(f"model file not found: {path}{hint}")
    if runtime == "openvino":
        try:
            return OpenVINOSession(path, precision, threads)
        except Exception as e:
            raise ValueError(f"cannot load {path} with OpenVINO: {e}") from None
    import onnxruntime as ort

    if graph_optimization_level not in _ORT_LEVELS:
        raise ValueError(f"graph_optimization_level must be one of {', '.join(_ORT_LEVELS)}")
    levels = dict(zip(_ORT_LEVELS, (
        ort.GraphOptimizationLevel.ORT_DISABLE_ALL, ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)))
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = levels[graph_optimization_level]
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if allow_spinning else "0")
    try:
        return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise ValueError(f"cannot load ONNX model {path}: {e}") from None
