"""Triton Python model: SPLADE activation and sparsification."""

from __future__ import annotations

import json
import math
import os

import triton_python_backend_utils as pb_utils

from splade_triton.serving.params import Param, RequestOptions, parse_request_options, read_model_parameters
from splade_triton.serving.splade import activate, sparsify
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
        path = os.path.join(args["model_repository"], args["model_version"], "tokenizer.json")
        # The encoder's output width is the masked-LM head's, which may be
        # padded past the tokenizer (30528 rows for 30522 ids): ids the
        # tokenizer lacks get "[unused<id>]" (serving/terms.py), never an
        # IndexError that would fail every request of the execution.
        self.terms = TermTable(load_tokenizer(path).get_vocab(with_added_tokens=True))

    def _respond(self, request):
        try:
            options = parse_request_options(request.parameters(), self.defaults)
        except ValueError as e:
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(str(e), pb_utils.TritonError.INVALID_ARG))
        pooled = pb_utils.get_input_tensor_by_name(request, "pooled_logits").as_numpy()
        # Only what this request's ensemble maps: the sparse outputs for
        # <name>, the vocabulary-wide vector for <name>_embedding.
        wanted = set(request.requested_output_names())
        outputs = []
        if wanted & {"indices", "values", "tokens"}:
            sparse = sparsify(pooled, top_k=options.top_k, min_weight=options.min_weight)
            outputs += [
                pb_utils.Tensor("indices", sparse.indices),
                pb_utils.Tensor("values", sparse.values),
                pb_utils.Tensor("tokens", self.terms.lookup(sparse.indices)),
            ]
        if "embedding" in wanted:
            outputs.append(pb_utils.Tensor("embedding", activate(pooled)))
        outputs = [t for t in outputs if t.name() in wanted]
        return pb_utils.InferenceResponse(output_tensors=outputs)

    def _respond_safely(self, request):
        # One request's unexpected failure is that request's error: raising
        # from execute() would fail every request of the execution.
        try:
            return self._respond(request)
        except Exception as e:  # noqa: BLE001
            message = f"sparsify failed: {type(e).__name__}: {e}"
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, pb_utils.TritonError.INTERNAL))

    def execute(self, requests):
        return [self._respond_safely(request) for request in requests]
