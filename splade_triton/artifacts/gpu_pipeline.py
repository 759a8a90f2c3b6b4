"""A pipeline as the GPU tools see it: its GPU settings and its exported model's files.

``export.build_engine``, ``export.validate_engine``, ``export.check_gpu_numerics``
and the image's start-up (``gpu_startup``) all take ``--pipeline SPEC`` and
an optional ``--onnx``; this reads them once, the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from splade_triton.artifacts.repository import PIPELINES, Pipeline, pipeline_configs
from splade_triton.artifacts.shapes import Shapes

__all__ = ["DEFAULT_SPEC", "GpuPipeline"]

DEFAULT_SPEC = PIPELINES / "splade.toml"


@dataclass(frozen=True)
class GpuPipeline:
    pipeline: Pipeline
    shapes: Shapes  # from the pipeline's GPU configs: the engine profile's source
    onnx: Path  # the fused graph: --onnx, or <model directory>/model.onnx
    tokenizer: Path  # <model directory>/tokenizer.json

    @classmethod
    def load(cls, spec: Path = DEFAULT_SPEC, onnx: Path | None = None, pipeline: Pipeline | None = None) -> "GpuPipeline":
        """Read ``spec`` (or take ``pipeline``, a variant); ValueError naming what is wrong."""
        pipeline = pipeline or Pipeline.load(spec)
        if pipeline.model is None:
            raise ValueError(f"pipeline '{pipeline.name}' names no model directory (its spec's 'model')")
        shapes = Shapes.from_configs(pipeline_configs(pipeline, "gpu"))
        return cls(pipeline, shapes, Path(onnx) if onnx else pipeline.model / "model.onnx", pipeline.model / "tokenizer.json")
