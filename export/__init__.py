"""Command-line tools that build the artifacts: fetch a model, export it to ONNX, build and validate TensorRT engines."""
