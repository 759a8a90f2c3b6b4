"""Triton Python model: ONNX Runtime BGE-M3 encoder (dense, per-token sparse weights, ColBERT)."""

from __future__ import annotations

import json
import os

import numpy as np
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

GRAPH_OUTPUTS = ("dense", "token_weights", "colbert")
# Per-token outputs and the leading positions their graph drops (colbert: <s>).
TOKEN_OUTPUTS = {"token_weights": 0, "colbert": 1}


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
        outputs = {o.name for o in self.session.get_outputs()}
        if not set(GRAPH_OUTPUTS) <= outputs:
            raise ValueError(f"{path} has outputs {sorted(outputs)}; a BGE-M3 export has {', '.join(GRAPH_OUTPUTS)}")
        self.encoder = RaggedEncoder(self.session, s["max_batch_tokens"], TOKEN_OUTPUTS)

    def _read(self, request):
        ids = pb_utils.get_input_tensor_by_name(request, "input_ids").as_numpy()
        mask = pb_utils.get_input_tensor_by_name(request, "attention_mask").as_numpy()
        if ids.ndim != 2 or ids.shape != mask.shape:
            return None, f"input_ids {ids.shape} and attention_mask {mask.shape} must be the same 2-D shape"
        if not mask.any(axis=1).all():
            return None, "every text needs at least one token with attention_mask 1"
        return (ids, mask), None

    def execute(self, requests):
        inputs, wanted, errors = [], [], {}
        for r, request in enumerate(requests):
            batch, error = self._read(request)
            if error:
                errors[r] = pb_utils.TritonError(error, pb_utils.TritonError.INVALID_ARG)
            else:
                inputs.append(batch)
                wanted.append(set(request.requested_output_names()))
        # What the ensembles of this execution map: the [n, L, hidden] ColBERT
        # tensor is copied out of ONNX Runtime only for <name>_colbert.
        union = set().union(*wanted) if wanted else set()
        names = [n for n in GRAPH_OUTPUTS if n in union]
        results = iter(self.encoder.run(inputs, names) if names else [{} for _ in inputs])
        batches, asked = iter(inputs), iter(wanted)
        responses = []
        for r in range(len(requests)):
            if r in errors:
                responses.append(pb_utils.InferenceResponse(error=errors[r]))
                continue
            (_, mask), result, want = next(batches), next(results), next(asked)
            tensors = [pb_utils.Tensor(n, np.ascontiguousarray(result[n])) for n in GRAPH_OUTPUTS if n in want]
            if "colbert_lengths" in want:
                lengths = np.maximum((mask != 0).sum(axis=1) - 1, 0).astype(np.int32)
                tensors.append(pb_utils.Tensor("colbert_lengths", lengths.reshape(-1, 1)))
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
        return responses
