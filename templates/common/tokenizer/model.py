"""Triton Python model: UTF-8 texts -> input_ids / attention_mask, for every kind.

Lengths (tokens per text, special tokens included; longer texts truncated):
``max_length`` alone gives every text one length (SPLADE); a config that
sets ``query_max_length`` / ``document_max_length`` (BGE-M3) lets the request
parameter ``input_type`` (query | document, "passage" a synonym; default
document) pick one, each defaulting to ``max_length``. Only such a config
reads ``input_type``: elsewhere it is a name like any other forwarded header.
When the version folder holds the export's ``export_info.json``, no length
may exceed its ``max_length`` (the model's position embeddings).
"""

from __future__ import annotations

import json
import os

import triton_python_backend_utils as pb_utils

from splade_triton.serving.bge_m3 import parse_input_type
from splade_triton.serving.params import Param, RequestOptions, parse_request_options, read_model_parameters
from splade_triton.serving.tokens import load_tokenizer, pad_ids, round_length

_LENGTH = (lambda v: v >= 2, "an integer >= 2")
PARAMETERS = {
    "max_length": Param(int, 512, *_LENGTH),
    # Absent: max_length.
    "query_max_length": Param(int, None, *_LENGTH),
    "document_max_length": Param(int, None, *_LENGTH),
    "max_text_bytes": Param(int, 65536, lambda v: v >= 1, "an integer >= 1"),
    "max_request_bytes": Param(int, 1048576, lambda v: v >= 1, "an integer >= 1"),
    # "request" and "batch" pad alike (each request to its own longest text,
    # rounded up to pad_to_multiple_of); "batch" tells the GPU tools that the
    # encoder takes rectangular batches (splade_triton/artifacts/shapes.py).
    "padding": Param(str, "request", lambda v: v in ("request", "batch"), "'request' or 'batch'"),
    "pad_to_multiple_of": Param(int, 1, lambda v: v >= 1, "an integer >= 1"),
}
INPUT_TYPES = ("query", "document")

# Stand-in defaults: only the request's own values are checked here.
_ANY_OPTIONS = RequestOptions(top_k=0, min_weight=0.0)


def _model_limit(version: str) -> tuple[int, str] | None:
    path = os.path.join(version, "export_info.json")
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        length = json.load(f).get("max_length")
    if isinstance(length, bool) or not isinstance(length, int) or length < 2:
        raise ValueError(f"{path}: max_length must be an integer >= 2, got {length!r}")
    return length, path


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.settings = s = read_model_parameters(config, PARAMETERS)
        self.typed = s["query_max_length"] is not None or s["document_max_length"] is not None
        self.lengths = {kind: s[f"{kind}_max_length"] or s["max_length"] for kind in INPUT_TYPES}
        version = os.path.join(args["model_repository"], args["model_version"])
        limit = _model_limit(version)
        if limit is not None:
            for kind, length in self.lengths.items():
                name = f"{kind}_max_length" if self.typed else "max_length"
                if length > limit[0]:
                    raise ValueError(
                        f"model parameter {name}={length} of model '{config.get('name')}' is beyond what the model "
                        f"serves: {limit[0]} tokens (max_length of {limit[1]}: its position embeddings)"
                    )
        path = os.path.join(version, "tokenizer.json")
        # One tokenizer per length: truncation is a setting of the tokenizer.
        by_length = {n: load_tokenizer(path, n) for n in set(self.lengths.values())}
        self.tokenizers = {kind: by_length[n] for kind, n in self.lengths.items()}

    def _texts(self, request):
        """(input_type, the request's texts as str, None), or (None, None, a message for the caller)."""
        try:
            # Checked here too, so a bad top_k / min_weight fails before any
            # encoder work; the sparse step applies them.
            parameters = request.parameters()
            parse_request_options(parameters, _ANY_OPTIONS)
            input_type = parse_input_type(parameters) if self.typed else "document"
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
        parsed, flat = [], {kind: [] for kind in INPUT_TYPES}
        for request in requests:
            input_type, texts, error = self._texts(request)
            if error:
                parsed.append((None, 0, 0, error))
                continue
            parsed.append((input_type, len(flat[input_type]), len(texts), None))
            flat[input_type].extend(texts)
        # All texts of one length in one call.
        encodings = {
            kind: self.tokenizers[kind].encode_batch(texts, add_special_tokens=True) if texts else []
            for kind, texts in flat.items()
        }
        # Each request is padded to its own longest text, rounded up to a
        # multiple of pad_to_multiple_of, never past its max_length (a
        # fixed-shape encoder's profile ends there). With "batch" (a TensorRT
        # encoder) that multiple is the bucket width: requests of one bucket
        # share a shape and batch together in the encoder's dynamic batcher,
        # and forty queries never get padded to the length of a passage that
        # arrived in the same execution. The CPU encoder regroups the texts
        # of all requests by length itself.
        responses = []
        for input_type, start, count, error in parsed:
            if error:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(error, pb_utils.TritonError.INVALID_ARG)))
                continue
            chunk = encodings[input_type][start : start + count]
            length = round_length(max(len(e.ids) for e in chunk), self.settings["pad_to_multiple_of"], self.lengths[input_type])
            ids, mask = pad_ids(chunk, length)
            responses.append(
                pb_utils.InferenceResponse(
                    output_tensors=[pb_utils.Tensor("input_ids", ids), pb_utils.Tensor("attention_mask", mask)]
                )
            )
        return responses
