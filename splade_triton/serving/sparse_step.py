"""The Python step that answers ``indices`` / ``values`` / ``tokens`` (Triton side).

SPLADE's ``sparsify`` and BGE-M3's ``lexical`` differ only in how they turn
their inputs into a SparseBatch (serving/sparse.py); the model parameters
(default ``top_k`` / ``min_weight``), the request options, the term table,
the per-request error handling and the output selection are this class.
Imported only by the templates' model.py files (it needs the Python
backend's ``triton_python_backend_utils``).

    class TritonPythonModel(SparseStep):
        STEP = "sparsify"
        def tensors(self, request, options, wanted, text): ...  # -> [pb_utils.Tensor]
"""

from __future__ import annotations

import json
import math
import os

import triton_python_backend_utils as pb_utils

from splade_triton.serving.params import (
    Param, RequestOptions, TextOptions, parse_request_options, parse_text_options, read_model_parameters,
    request_parameters,
)
from splade_triton.serving.terms import TermTable
from splade_triton.serving.tokens import load_tokenizer

__all__ = ["PARAMETERS", "SPARSE_OUTPUTS", "SparseStep"]

PARAMETERS = {
    "top_k": Param(int, 0, lambda v: v >= 0, "an integer >= 0"),
    "min_weight": Param(float, 0.0, lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0"),
}
SPARSE_OUTPUTS = ("indices", "values", "tokens")


class SparseStep:
    STEP = "sparse"  # named in the message of an unexpected failure

    def initialize(self, args):
        settings = read_model_parameters(json.loads(args["model_config"]), PARAMETERS)
        self.defaults = RequestOptions(top_k=settings["top_k"], min_weight=settings["min_weight"])
        self.version = os.path.join(args["model_repository"], args["model_version"])
        # An id the tokenizer lacks (an encoder wider than the tokenizer) gets
        # "[unused<id>]" (serving/terms.py), never an IndexError that would
        # fail every request of the execution.
        self.terms = TermTable(load_tokenizer(os.path.join(self.version, "tokenizer.json")).get_vocab(with_added_tokens=True))
        self.setup()

    def setup(self) -> None:
        """More set-up of a subclass (after ``self.version`` and ``self.terms``)."""

    def tensors(self, request, options: RequestOptions, wanted: set, text: TextOptions) -> list:
        """The output tensors of ``request`` (at least those in ``wanted``); ``text``: its side."""
        raise NotImplementedError

    def sparse_tensors(self, sparse, wanted: set, prefix: str = "") -> list:
        """``indices``, ``values`` and, when asked for, ``tokens`` of a SparseBatch (names prefixed)."""
        tensors = [pb_utils.Tensor(f"{prefix}indices", sparse.indices), pb_utils.Tensor(f"{prefix}values", sparse.values)]
        if f"{prefix}tokens" in wanted:
            tensors.append(pb_utils.Tensor(f"{prefix}tokens", self.terms.lookup(sparse.indices)))
        return tensors

    def _respond(self, request):
        try:
            parameters = request_parameters(request.parameters())
            options = parse_request_options(parameters, self.defaults)
            text = parse_text_options(parameters)
        except ValueError as e:
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(str(e), pb_utils.TritonError.INVALID_ARG))
        # Only what this request's ensemble maps.
        wanted = set(request.requested_output_names())
        tensors = self.tensors(request, options, wanted, text)
        return pb_utils.InferenceResponse(output_tensors=[t for t in tensors if t.name() in wanted])

    def _respond_safely(self, request):
        # One request's unexpected failure is that request's error: raising
        # from execute() would fail every request of the execution.
        try:
            return self._respond(request)
        except Exception as e:  # noqa: BLE001
            message = f"{self.STEP} failed: {type(e).__name__}: {e}"
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, pb_utils.TritonError.INTERNAL))

    def execute(self, requests):
        return [self._respond_safely(request) for request in requests]
