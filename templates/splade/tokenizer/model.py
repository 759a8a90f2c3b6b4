"""Triton Python model: UTF-8 texts -> input_ids / attention_mask."""

from __future__ import annotations

import json
import os

import triton_python_backend_utils as pb_utils

from splade_triton.serving.params import Param, RequestOptions, parse_request_options, read_model_parameters
from splade_triton.serving.tokens import load_tokenizer, pad_ids, round_length

PARAMETERS = {
    "max_length": Param(int, 512, lambda v: v >= 2, "an integer >= 2"),
    "max_text_bytes": Param(int, 65536, lambda v: v >= 1, "an integer >= 1"),
    "max_request_bytes": Param(int, 1048576, lambda v: v >= 1, "an integer >= 1"),
    "padding": Param(str, "request", lambda v: v in ("request", "batch"), "'request' or 'batch'"),
    "pad_to_multiple_of": Param(int, 1, lambda v: v >= 1, "an integer >= 1"),
}

# Stand-in defaults: only the request's own values are checked here.
_ANY_OPTIONS = RequestOptions(top_k=0, min_weight=0.0)


class TritonPythonModel:
    def initialize(self, args):
        self.settings = read_model_parameters(json.loads(args["model_config"]), PARAMETERS)
        path = os.path.join(args["model_repository"], args["model_version"], "tokenizer.json")
        self.tokenizer = load_tokenizer(path, self.settings["max_length"])

    def _texts(self, request):
        """The request's texts as str, or an error message for the caller."""
        try:
            # Checked here too, so a bad top_k / min_weight fails before any
            # encoder work; the sparsify step applies them.
            parse_request_options(request.parameters(), _ANY_OPTIONS)
        except ValueError as e:
            return None, str(e)
        raw = pb_utils.get_input_tensor_by_name(request, "text").as_numpy().reshape(-1)
        items = [item if isinstance(item, bytes) else str(item).encode() for item in raw]
        total, request_limit = sum(len(data) for data in items), self.settings["max_request_bytes"]
        if total > request_limit:
            return None, (
                f"the request's texts are {total} bytes in total; the limit is {request_limit} bytes (max_request_bytes)"
            )
        limit = self.settings["max_text_bytes"]
        texts = []
        for i, data in enumerate(items):
            if len(data) > limit:
                return None, f"text {i} is {len(data)} bytes; the limit is {limit} bytes (max_text_bytes)"
            try:
                texts.append(data.decode("utf-8"))
            except UnicodeDecodeError as e:
                return None, f"text {i} is not valid UTF-8: {e.reason} at byte {e.start}"
        return texts, None

    def _length(self, longest):
        # Never past max_length: a fixed-shape encoder's profile ends there.
        return round_length(longest, self.settings["pad_to_multiple_of"], self.settings["max_length"])

    def execute(self, requests):
        per_request, errors, flat = [], {}, []
        for r, request in enumerate(requests):
            texts, error = self._texts(request)
            if error:
                errors[r] = error
                texts = []
            per_request.append(len(texts))
            flat.extend(texts)

        encodings = self.tokenizer.encode_batch(flat, add_special_tokens=True) if flat else []

        # Each request is padded to its own longest text, rounded up to a
        # multiple of pad_to_multiple_of ("request" and "batch" alike). With
        # "batch" (a fixed-shape TensorRT encoder) that multiple is the bucket
        # width: requests of one bucket share a shape and batch together in
        # the encoder's dynamic batcher, and forty queries never get padded to
        # the 512 tokens of a passage that arrived in the same execution.
        responses, start = [], 0
        for r, count in enumerate(per_request):
            if r in errors:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(errors[r], pb_utils.TritonError.INVALID_ARG)))
                continue
            chunk = encodings[start : start + count]
            start += count
            ids, mask = pad_ids(chunk, self._length(max(len(e.ids) for e in chunk)))
            responses.append(
                pb_utils.InferenceResponse(
                    output_tensors=[pb_utils.Tensor("input_ids", ids), pb_utils.Tensor("attention_mask", mask)]
                )
            )
        return responses
