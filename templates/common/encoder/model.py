"""Triton Python model: the encoder of every kind (SPLADE, BGE-M3), on ONNX Runtime or OpenVINO.

The graph's outputs are this model's outputs (its config.pbtxt lists them):
SPLADE's ``pooled_logits`` [N, vocab]; BGE-M3's ``dense`` [N, hidden],
``token_weights`` [N, L] and ``colbert`` [N, L-1, hidden], plus
``colbert_lengths`` [N, 1] computed from the mask. Requests padded to
different lengths are regrouped by length (splade_triton.serving.encoding).
Settings: ``runtime`` (onnxruntime | openvino), ``precision`` (fp32 | bf16 |
int8), compiled once at load (splade_triton.serving.runtime).
"""

from __future__ import annotations

import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils

from splade_triton.serving.encoding import RaggedEncoder
from splade_triton.serving.params import Param, read_model_parameters
from splade_triton.serving.runtime import PRECISIONS, RUNTIMES, check_fidelity, model_file, open_session

_LEVELS = ("disable", "basic", "extended", "all")

PARAMETERS = {
    "onnx_file": Param(str, "model.onnx"),
    "runtime": Param(str, "onnxruntime", lambda v: v in RUNTIMES, " | ".join(RUNTIMES)),
    "precision": Param(str, "fp32", lambda v: v in PRECISIONS, " | ".join(PRECISIONS)),
    # enforce: a bf16 / int8 whose recorded fidelity gate failed is refused at load; warn: served, logged.
    "fidelity_gate": Param(str, "enforce", lambda v: v in ("enforce", "warn"), "enforce | warn"),
    "max_batch_tokens": Param(int, 8192, lambda v: v >= 1, "an integer >= 1"),
    "intra_op_threads": Param(int, 0, lambda v: v >= 0, "an integer >= 0"),
    "allow_spinning": Param(bool, False),
    "graph_optimization_level": Param(str, "all", lambda v: v in _LEVELS, " | ".join(_LEVELS)),
}

# Per-token outputs and the leading positions their graph drops (colbert: <s>).
TOKEN_OUTPUTS = {"token_weights": 0, "colbert": 1}
# Computed here from the attention mask, not by the graph.
DERIVED_OUTPUTS = {"colbert_lengths"}


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.settings = s = read_model_parameters(config, PARAMETERS)
        folder = os.path.join(args["model_repository"], args["model_version"])
        path = model_file(folder, s["onnx_file"], s["precision"])
        warning = check_fidelity(os.path.join(folder, "export_info.json"), s["runtime"], s["precision"],
                                 s["fidelity_gate"] == "enforce")
        if warning:
            pb_utils.Logger.log_warn(f"{args['model_name']}: {warning}")
        self.session = open_session(path, s["runtime"], s["precision"], s["intra_op_threads"],
                                    s["allow_spinning"], s["graph_optimization_level"])
        names = {i.name for i in self.session.get_inputs()}
        if names != {"input_ids", "attention_mask"}:
            raise ValueError(f"{path} takes inputs {sorted(names)}; expected input_ids, attention_mask")
        graph = [o.name for o in self.session.get_outputs()]
        declared = [o["name"] for o in config.get("output", [])]
        missing = [n for n in declared if n not in graph and n not in DERIVED_OUTPUTS]
        if missing:
            raise ValueError(f"{path} has outputs {sorted(graph)}; this model's config declares {', '.join(missing)}")
        self.graph_outputs = [n for n in declared if n in graph]
        self.encoder = RaggedEncoder(self.session, s["max_batch_tokens"],
                                     {n: d for n, d in TOKEN_OUTPUTS.items() if n in self.graph_outputs})

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
        # Only what the ensembles of this execution map leaves the runtime:
        # BGE-M3's [n, L, hidden] ColBERT tensor only for <name>_colbert.
        union = set().union(*wanted) if wanted else set()
        names = [n for n in self.graph_outputs if n in union]
        results = iter(self.encoder.run(inputs, names) if names else [{} for _ in inputs])
        batches, asked = iter(inputs), iter(wanted)
        responses = []
        for r in range(len(requests)):
            if r in errors:
                responses.append(pb_utils.InferenceResponse(error=errors[r]))
                continue
            (_, mask), result, want = next(batches), next(results), next(asked)
            tensors = [pb_utils.Tensor(n, np.ascontiguousarray(result[n])) for n in self.graph_outputs if n in want]
            if "colbert_lengths" in want:
                lengths = np.maximum((mask != 0).sum(axis=1) - 1, 0).astype(np.int32)
                tensors.append(pb_utils.Tensor("colbert_lengths", lengths.reshape(-1, 1)))
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
        return responses
