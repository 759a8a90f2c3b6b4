"""Triton Python model: ONNX Runtime encoder with the fused SPLADE max-pooling."""

from __future__ import annotations

import json
import os

import onnxruntime as ort
import triton_python_backend_utils as pb_utils

from splade_triton.serving.encoding import RaggedEncoder
from splade_triton.serving.params import Param, read_model_parameters

_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}

PARAMETERS = {
    "onnx_file": Param(str, "model.onnx"),
    "max_batch_tokens": Param(int, 8192, lambda v: v >= 1, "an integer >= 1"),
    "intra_op_threads": Param(int, 0, lambda v: v >= 0, "an integer >= 0"),
    "allow_spinning": Param(bool, False),
    "graph_optimization_level": Param(str, "all", lambda v: v in _LEVELS, " | ".join(_LEVELS)),
}


class TritonPythonModel:
    def initialize(self, args):
        self.settings = s = read_model_parameters(json.loads(args["model_config"]), PARAMETERS)
        path = os.path.join(args["model_repository"], args["model_version"], s["onnx_file"])
        if not os.path.isfile(path):
            raise FileNotFoundError(f"ONNX model not found: {path} (run export/export_onnx.py)")
        options = ort.SessionOptions()
        options.intra_op_num_threads = s["intra_op_threads"]
        options.inter_op_num_threads = 1
        options.graph_optimization_level = _LEVELS[s["graph_optimization_level"]]
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if s["allow_spinning"] else "0")
        try:
            self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise ValueError(f"cannot load ONNX model {path}: {e}") from None
        names = {i.name for i in self.session.get_inputs()}
        if names != {"input_ids", "attention_mask"}:
            raise ValueError(f"{path} takes inputs {sorted(names)}; expected input_ids, attention_mask")
        self.encoder = RaggedEncoder(self.session, s["max_batch_tokens"])

    def _read(self, request):
        ids = pb_utils.get_input_tensor_by_name(request, "input_ids").as_numpy()
        mask = pb_utils.get_input_tensor_by_name(request, "attention_mask").as_numpy()
        if ids.ndim != 2 or ids.shape != mask.shape:
            return None, f"input_ids {ids.shape} and attention_mask {mask.shape} must be the same 2-D shape"
        if not mask.any(axis=1).all():
            return None, "every text needs at least one token with attention_mask 1"
        return (ids, mask), None

    def execute(self, requests):
        inputs, errors = [], {}
        for r, request in enumerate(requests):
            batch, error = self._read(request)
            if error:
                errors[r] = pb_utils.TritonError(error, pb_utils.TritonError.INVALID_ARG)
            else:
                inputs.append(batch)
        pooled = iter(self.encoder.encode(inputs))
        return [
            pb_utils.InferenceResponse(error=errors[r])
            if r in errors
            else pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("pooled_logits", next(pooled))])
            for r in range(len(requests))
        ]
