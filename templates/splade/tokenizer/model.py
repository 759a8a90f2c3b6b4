"""Triton Python model: UTF-8 texts -> input_ids / attention_mask."""

from __future__ import annotations

import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils
from tokenizers import Tokenizer

from splade_triton.serving.params import Param, RequestOptions, parse_request_options, read_model_parameters

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
        if not os.path.isfile(path):
            raise FileNotFoundError(f"tokenizer file not found: {path} (run export/export_onnx.py)")
        try:
            self.tokenizer = Tokenizer.from_file(path)
        except Exception as e:
            raise ValueError(f"cannot load tokenizer file {path}: {e}") from None
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length=self.settings["max_length"])

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

    def _pad(self, encodings, length):
        ids = np.zeros((len(encodings), length), dtype=np.int64)
        mask = np.zeros((len(encodings), length), dtype=np.int64)
        for row, enc in enumerate(encodings):
            n = len(enc.ids)
            ids[row, :n] = enc.ids
            mask[row, :n] = 1
        return ids, mask

    def _round(self, length):
        # Never past max_length: a fixed-shape encoder's profile ends there.
        multiple = self.settings["pad_to_multiple_of"]
        return min(-(-length // multiple) * multiple, self.settings["max_length"])

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
        batch_length = self._round(max((len(e.ids) for e in encodings), default=1))

        responses, start = [], 0
        for r, count in enumerate(per_request):
            if r in errors:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(errors[r], pb_utils.TritonError.INVALID_ARG)))
                continue
            chunk = encodings[start : start + count]
            start += count
            if self.settings["padding"] == "batch":
                length = batch_length
            else:
                length = self._round(max(len(e.ids) for e in chunk))
            ids, mask = self._pad(chunk, length)
            responses.append(
                pb_utils.InferenceResponse(
                    output_tensors=[pb_utils.Tensor("input_ids", ids), pb_utils.Tensor("attention_mask", mask)]
                )
            )
        return responses
