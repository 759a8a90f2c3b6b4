"""Build-time code: model repository assembly, ONNX / TensorRT artifacts, validation against reference models."""
