"""Triton Python model: BGE-M3 lexical weights from per-token weights."""

from __future__ import annotations

import json
import math
import os

import triton_python_backend_utils as pb_utils

from splade_triton.serving.bge_m3 import SPECIAL_TOKENS, lexical_weights, read_export_info
from splade_triton.serving.params import Param, RequestOptions, parse_request_options, read_model_parameters
from splade_triton.serving.terms import TermTable
from splade_triton.serving.tokens import load_tokenizer

PARAMETERS = {
    "top_k": Param(int, 0, lambda v: v >= 0, "an integer >= 0"),
    "min_weight": Param(float, 0.0, lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0"),
}


class TritonPythonModel:
    def initialize(self, args):
        settings = read_model_parameters(json.loads(args["model_config"]), PARAMETERS)
        self.defaults = RequestOptions(top_k=settings["top_k"], min_weight=settings["min_weight"])
        version = os.path.join(args["model_repository"], args["model_version"])
        info = read_export_info(os.path.join(version, "export_info.json"))
        self.special_ids = sorted({info["special_ids"][k] for k in SPECIAL_TOKENS})
        self.terms = TermTable(load_tokenizer(os.path.join(version, "tokenizer.json")).get_vocab(with_added_tokens=True))

    def _respond(self, request):
        try:
            options = parse_request_options(request.parameters(), self.defaults)
        except ValueError as e:
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(str(e), pb_utils.TritonError.INVALID_ARG))
        wanted = set(request.requested_output_names())
        if not wanted & {"indices", "values", "tokens"}:
            return pb_utils.InferenceResponse(output_tensors=[])
        ids = pb_utils.get_input_tensor_by_name(request, "input_ids").as_numpy()
        weights = pb_utils.get_input_tensor_by_name(request, "token_weights").as_numpy()
        sparse = lexical_weights(ids, weights, self.special_ids, top_k=options.top_k, min_weight=options.min_weight)
        outputs = [pb_utils.Tensor("indices", sparse.indices), pb_utils.Tensor("values", sparse.values)]
        if "tokens" in wanted:
            outputs.append(pb_utils.Tensor("tokens", self.terms.lookup(sparse.indices)))
        return pb_utils.InferenceResponse(output_tensors=[t for t in outputs if t.name() in wanted])

    def _respond_safely(self, request):
        # One request's unexpected failure is that request's error: raising
        # from execute() would fail every request of the execution.
        try:
            return self._respond(request)
        except Exception as e:  # noqa: BLE001
            message = f"lexical failed: {type(e).__name__}: {e}"
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, pb_utils.TritonError.INTERNAL))

    def execute(self, requests):
        return [self._respond_safely(request) for request in requests]
