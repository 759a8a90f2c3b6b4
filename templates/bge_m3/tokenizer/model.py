"""Triton Python model: UTF-8 texts -> input_ids / attention_mask, query or document length."""

from __future__ import annotations

import json
import os

import triton_python_backend_utils as pb_utils

from splade_triton.serving.bge_m3 import parse_input_type, read_export_info
from splade_triton.serving.params import Param, RequestOptions, parse_request_options, read_model_parameters
from splade_triton.serving.tokens import load_tokenizer, pad_ids, round_length

PARAMETERS = {
    "query_max_length": Param(int, 512, lambda v: v >= 2, "an integer >= 2"),
    "document_max_length": Param(int, 8192, lambda v: v >= 2, "an integer >= 2"),
    "max_text_bytes": Param(int, 65536, lambda v: v >= 1, "an integer >= 1"),
    "max_request_bytes": Param(int, 1048576, lambda v: v >= 1, "an integer >= 1"),
    "pad_to_multiple_of": Param(int, 1, lambda v: v >= 1, "an integer >= 1"),
}

# Stand-in defaults: only the request's own values are checked here.
_ANY_OPTIONS = RequestOptions(top_k=0, min_weight=0.0)


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.settings = s = read_model_parameters(config, PARAMETERS)
        version = os.path.join(args["model_repository"], args["model_version"])
        info_path = os.path.join(version, "export_info.json")
        limit = read_export_info(info_path)["max_length"]
        for name in ("query_max_length", "document_max_length"):
            if s[name] > limit:
                raise ValueError(
                    f"model parameter {name}={s[name]} of model '{config.get('name')}' is beyond what the model "
                    f"serves: {limit} tokens (max_length of {info_path}: its position embeddings)"
                )
        path = os.path.join(version, "tokenizer.json")
        # One tokenizer per length: truncation is a setting of the tokenizer.
        self.tokenizers = {
            "query": load_tokenizer(path, s["query_max_length"]),
            "document": load_tokenizer(path, s["document_max_length"]),
        }

    def _texts(self, request):
        """(input_type, the request's texts as str), or an error message for the caller."""
        try:
            # Checked here too, so a bad top_k / min_weight fails before any
            # encoder work; the lexical step applies them.
            parse_request_options(request.parameters(), _ANY_OPTIONS)
            input_type = parse_input_type(request.parameters())
        except ValueError as e:
            return None, None, str(e)
        raw = pb_utils.get_input_tensor_by_name(request, "text").as_numpy().reshape(-1)
        items = [item if isinstance(item, bytes) else str(item).encode() for item in raw]
        total, request_limit = sum(len(data) for data in items), self.settings["max_request_bytes"]
        if total > request_limit:
            return None, None, (
                f"the request's texts are {total} bytes in total; the limit is {request_limit} bytes (max_request_bytes)"
            )
        limit = self.settings["max_text_bytes"]
        texts = []
        for i, data in enumerate(items):
            if len(data) > limit:
                return None, None, f"text {i} is {len(data)} bytes; the limit is {limit} bytes (max_text_bytes)"
            try:
                texts.append(data.decode("utf-8"))
            except UnicodeDecodeError as e:
                return None, None, f"text {i} is not valid UTF-8: {e.reason} at byte {e.start}"
        return input_type, texts, None

    def execute(self, requests):
        parsed, flat = [], {"query": [], "document": []}
        for request in requests:
            input_type, texts, error = self._texts(request)
            if error:
                parsed.append((None, 0, 0, error))
                continue
            parsed.append((input_type, len(flat[input_type]), len(texts), None))
            flat[input_type].extend(texts)
        encodings = {
            kind: self.tokenizers[kind].encode_batch(texts, add_special_tokens=True) if texts else []
            for kind, texts in flat.items()
        }
        # Each request is padded to its own longest text (rounded up to
        # pad_to_multiple_of, never past its max_length); the encoder regroups
        # the texts of all requests by length.
        responses = []
        for input_type, start, count, error in parsed:
            if error:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(error, pb_utils.TritonError.INVALID_ARG)))
                continue
            chunk = encodings[input_type][start : start + count]
            length = round_length(max(len(e.ids) for e in chunk), self.settings["pad_to_multiple_of"],
                                  self.settings[f"{input_type}_max_length"])
            ids, mask = pad_ids(chunk, length)
            responses.append(
                pb_utils.InferenceResponse(
                    output_tensors=[pb_utils.Tensor("input_ids", ids), pb_utils.Tensor("attention_mask", mask)]
                )
            )
        return responses
