"""A pipeline as the GPU tools see it: its GPU settings and its exported model's files.

``export.build_engine``, ``export.validate_engine``, ``export.check_gpu_numerics``
and the image's start-up (``gpu_startup``) all take ``--pipeline SPEC`` and
an optional ``--onnx``; this reads them once, the same way.

The engine's outputs are the GPU encoder config's (one source of truth, the
same as the CPU encoder's): what the exported graph lacks and the config
declares is added to the graph TensorRT compiles (``engine_graph``), today
BGE-M3's ``colbert_lengths``, which the CPU encoder computes in Python.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from tritonclient.grpc import model_config_pb2

from splade_triton.artifacts.fp32_layers import DEFAULT_FP32_GROUPS
from splade_triton.artifacts.repository import PIPELINES, Pipeline, pipeline_configs
from splade_triton.artifacts.shapes import Shapes

__all__ = ["DEFAULT_FP32", "DEFAULT_SPEC", "DERIVED_OUTPUTS", "ENGINE_TYPES", "GpuPipeline", "add_derived_outputs",
           "default_fp32_groups", "engine_graph"]

DEFAULT_SPEC = PIPELINES / "splade.toml"

# Layer groups an FP16 engine keeps in FP32, per kind (export.build_engine --fp32).
# SPLADE: its pooling tail (max over tokens of the vocabulary logits).
# BGE-M3: its heads (export.build_engine.head_layers): the L2 norms of dense
# and colbert (a sum of 1024 squares overflows FP16) and relu(sparse_linear).
DEFAULT_FP32 = {
    "splade": DEFAULT_FP32_GROUPS,
    "bge_m3": ("normalization", "softmax", "attention_mask", "heads"),
}

# Config dtype -> the TensorRT dtype name an engine reports.
ENGINE_TYPES = {model_config_pb2.TYPE_FP32: "FLOAT", model_config_pb2.TYPE_INT32: "INT32",
                model_config_pb2.TYPE_INT64: "INT64", model_config_pb2.TYPE_FP16: "HALF"}

# Outputs the build may add to an exported graph: name -> how (add_derived_outputs).
DERIVED_OUTPUTS = ("colbert_lengths",)


def default_fp32_groups(kind: str) -> tuple[str, ...]:
    return DEFAULT_FP32.get(kind, DEFAULT_FP32["splade"])


@dataclass(frozen=True)
class GpuPipeline:
    pipeline: Pipeline
    shapes: Shapes  # from the pipeline's GPU configs: the engine profile's source
    onnx: Path  # the fused graph: --onnx, or <model directory>/model.onnx
    tokenizer: Path  # <model directory>/tokenizer.json
    inputs: dict  # the GPU encoder's input name -> TensorRT dtype name
    outputs: dict  # the GPU encoder's output name -> TensorRT dtype name, in config order

    @classmethod
    def load(cls, spec: Path = DEFAULT_SPEC, onnx: Path | None = None, pipeline: Pipeline | None = None) -> "GpuPipeline":
        """Read ``spec`` (or take ``pipeline``, a variant); ValueError naming what is wrong."""
        pipeline = pipeline or Pipeline.load(spec)
        if pipeline.model is None:
            raise ValueError(f"pipeline '{pipeline.name}' names no model directory (its spec's 'model')")
        configs = pipeline_configs(pipeline, "gpu")
        encoder = configs["encoder"]

        def types(tensors):
            return {t.name: ENGINE_TYPES.get(t.data_type, model_config_pb2.DataType.Name(t.data_type)) for t in tensors}

        return cls(pipeline, Shapes.from_configs(configs), Path(onnx) if onnx else pipeline.model / "model.onnx",
                   pipeline.model / "tokenizer.json", types(encoder.input), types(encoder.output))

    @property
    def fp32_groups(self) -> tuple[str, ...]:
        return default_fp32_groups(self.pipeline.kind)


def add_derived_outputs(model, wanted) -> list[str]:
    """Add to the ONNX ``model`` (in place) the outputs of ``wanted`` it lacks; their names.

    ``colbert_lengths`` int32 [batch, 1]: the real tokens after ``<s>``,
    max(sum(attention_mask) - 1, 0), as the CPU encoder computes it. The sum
    runs in float (exact below 2^24 tokens) so every TensorRT layer involved
    takes it. Raises ValueError for an output nobody knows how to add.
    """
    from onnx import TensorProto, helper

    graph = model.graph
    have = {o.name for o in graph.output}
    missing = [name for name in wanted if name not in have]
    unknown = [name for name in missing if name not in DERIVED_OUTPUTS]
    if unknown:
        raise ValueError(f"the encoder config declares output(s) {unknown} that the graph lacks "
                         f"(graph outputs: {sorted(have)}); export the model again (python -m export.export_onnx)")
    if "colbert_lengths" in missing:
        if "attention_mask" not in {i.name for i in graph.input}:
            raise ValueError("colbert_lengths needs the graph input attention_mask")
        prefix = "engine_colbert_lengths"
        graph.initializer.extend([
            helper.make_tensor(f"{prefix}_axes", TensorProto.INT64, [1], [1]),
            helper.make_tensor(f"{prefix}_one", TensorProto.FLOAT, [], [1.0]),
        ])
        graph.node.extend([
            helper.make_node("Cast", ["attention_mask"], [f"{prefix}_mask"], name=f"{prefix}_cast_mask", to=TensorProto.FLOAT),
            helper.make_node("ReduceSum", [f"{prefix}_mask", f"{prefix}_axes"], [f"{prefix}_tokens"], name=f"{prefix}_sum",
                             keepdims=1),
            helper.make_node("Sub", [f"{prefix}_tokens", f"{prefix}_one"], [f"{prefix}_after_cls"], name=f"{prefix}_sub"),
            helper.make_node("Relu", [f"{prefix}_after_cls"], [f"{prefix}_float"], name=f"{prefix}_relu"),
            helper.make_node("Cast", [f"{prefix}_float"], ["colbert_lengths"], name=f"{prefix}_cast", to=TensorProto.INT32),
        ])
        batch = graph.input[[i.name for i in graph.input].index("attention_mask")].type.tensor_type.shape.dim[0]
        graph.output.append(helper.make_tensor_value_info("colbert_lengths", TensorProto.INT32,
                                                          [batch.dim_param or batch.dim_value or "batch", 1]))
    return missing


def engine_graph(onnx_path: Path, outputs, folder: Path) -> Path:
    """The graph TensorRT compiles: ``onnx_path`` itself when it has every output
    of ``outputs``, else a copy in ``folder`` with the derived ones added
    (add_derived_outputs), its external data (if any) linked beside it."""
    import onnx

    onnx_path = Path(onnx_path)
    model = onnx.load(str(onnx_path), load_external_data=False)
    if not add_derived_outputs(model, list(outputs)):
        return onnx_path
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / onnx_path.name
    onnx.save(model, str(target))
    locations = {entry.value for init in model.graph.initializer for entry in init.external_data if entry.key == "location"}
    for location in locations:
        source, linked = onnx_path.parent / location, folder / location
        if linked.exists() or linked.is_symlink():
            linked.unlink()
        try:
            os.link(source, linked)  # a 2 GB file: never copied when a link will do
        except OSError:
            try:
                linked.symlink_to(source.resolve())
            except OSError:
                shutil.copyfile(source, linked)
    return target
