"""Learned sparse embeddings served by NVIDIA Triton Inference Server.

The package is split by when its code runs:

- ``splade_triton.serving``: inside Triton, imported by the Python-backend
  models. Depends only on the served runtime (numpy, tokenizers,
  onnxruntime) and is copied beside every model.py when a repository is
  assembled, so a repository serves without this project installed.
- ``splade_triton.launcher``: the process that starts, supervises and drains
  tritonserver (script/serve, tests, benchmarks, the GPU image).
- ``splade_triton.artifacts``: build time: repository assembly, ONNX and
  TensorRT engines, validation against the reference models.
"""

__version__ = "0.1.0"
