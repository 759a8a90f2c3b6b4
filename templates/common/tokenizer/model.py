"""Triton Python model: UTF-8 texts -> input_ids / attention_mask, for every kind.

Sides: the request parameter ``input_type`` (query | document, "passage" a
synonym; default document) picks the side, each with its own length
(``splade_triton.serving.sides.effective_length``: the config's
``query_max_length`` / ``document_max_length``, else its ``max_length``, else
the export's length of the side, else 512; never beyond the export's
``max_length``, its position embeddings); and its own tokenization (an
inference-free query side adds no special tokens, as sentence-transformers'
SparseStaticEmbedding).

Long texts (``overflow``, per request, default in config): ``truncate`` (keep
``max_length`` tokens from the ``truncation_direction`` end), ``error``
(INVALID_ARG naming the token count), or ``chunk`` (windows of
``max_length`` tokens sharing ``chunk_overlap``, one encoder row each; the
rows' ``text_index`` tells the last step which text they belong to). Every
response carries each text's ``num_tokens``, ``truncated`` and ``windows``.
Chunking needs a pipeline whose config declares ``text_index`` (SPLADE's).
"""

from __future__ import annotations

import json
import os
import sys

import triton_python_backend_utils as pb_utils

# This folder's own copy of splade_triton (placed by the repository assembly) before any other:
# the stub puts the server's working directory first on sys.path.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from splade_triton.serving.params import (
    DIRECTIONS, OVERFLOWS, Param, RequestOptions, TextOptions, parse_request_options, parse_text_options,
    read_model_parameters, request_parameters,
)
from splade_triton.serving.sides import SIDES, effective_length, read_export_info, read_sides
from splade_triton.serving.tokens import load_tokenizer, pad_ids, round_length
from splade_triton.serving.windows import TextTooLong, cut, special_count

_LENGTH = (lambda v: v >= 2, "an integer >= 2")
PARAMETERS = {
    # Absent: see effective_length (the export's length of the side, else 512).
    "max_length": Param(int, None, *_LENGTH),
    "query_max_length": Param(int, None, *_LENGTH),
    "document_max_length": Param(int, None, *_LENGTH),
    "max_text_bytes": Param(int, 65536, lambda v: v >= 1, "an integer >= 1"),
    "max_request_bytes": Param(int, 1048576, lambda v: v >= 1, "an integer >= 1"),
    "pad_to_multiple_of": Param(int, 1, lambda v: v >= 1, "an integer >= 1"),
    # Request defaults of overflow / truncation_direction.
    "overflow": Param(str, "truncate", lambda v: v in OVERFLOWS, " | ".join(OVERFLOWS)),
    "truncation_direction": Param(str, "right", lambda v: v in DIRECTIONS, " | ".join(DIRECTIONS)),
    # Tokens consecutive windows share (chunk); below every side's length minus its special tokens.
    "chunk_overlap": Param(int, 0, lambda v: v >= 0, "an integer >= 0"),
    # Encoder rows one request may make (chunk): at most the encoder's max_batch_size.
    "max_windows": Param(int, 512, lambda v: v >= 1, "an integer >= 1"),
}

# Stand-in defaults: only the request's own values are checked here.
_ANY_OPTIONS = RequestOptions(top_k=0, min_weight=0.0)


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.name = config.get("name")
        self.settings = s = read_model_parameters(config, PARAMETERS)
        version = os.path.join(args["model_repository"], args["model_version"])
        info, info_path = read_export_info(version), os.path.join(version, "export_info.json")
        sides = read_sides(info, info_path)
        try:
            self.lengths = {side: effective_length(side, s, info, where=info_path) for side in SIDES}
        except ValueError as e:
            raise ValueError(f"model '{self.name}': {e}") from None
        self.path = os.path.join(version, "tokenizer.json")
        self.special = {side: sides[side].special_tokens for side in SIDES}
        self._tokenizers = {}
        self.n_special = {side: special_count(self._tokenizer(side, "right"), self.special[side]) for side in SIDES}
        for side in SIDES:
            # At most half a window: the tokenizer builds every window before
            # max_windows is checked, and an overlap near the window's length
            # would make a window per few tokens (gigabytes for one request).
            content = self.lengths[side] - self.n_special[side]
            if s["chunk_overlap"] > content // 2:
                raise ValueError(
                    f"model parameter chunk_overlap={s['chunk_overlap']} of model '{self.name}' must be at most half "
                    f"the {side} side's window: ({self.lengths[side]} tokens - {self.n_special[side]} special) / 2 "
                    f"= {content // 2}"
                )
        self.outputs = {o["name"] for o in config.get("output", [])}
        # The steps after this one aggregate windows only where the config routes text_index to them.
        self.chunking = "text_index" in self.outputs
        if s["overflow"] == "chunk" and not self.chunking:
            raise ValueError(f"model parameter overflow=chunk of model '{self.name}': this pipeline does not chunk "
                             "(its config has no text_index output)")
        self.defaults = TextOptions("document", s["overflow"], s["truncation_direction"])

    def _tokenizer(self, side: str, direction: str):
        # One tokenizer per (length, direction): truncation is a setting of the tokenizer.
        key = (self.lengths[side], direction)
        if key not in self._tokenizers:
            tokenizer = load_tokenizer(self.path, self.lengths[side])
            tokenizer.enable_truncation(self.lengths[side], stride=self.settings["chunk_overlap"], direction=direction)
            self._tokenizers[key] = tokenizer
        return self._tokenizers[key]

    def _texts(self, request):
        """(TextOptions, the request's texts as str, None), or (None, None, a message for the caller)."""
        try:
            # Checked here too, so a bad top_k / min_weight fails before any
            # encoder work; the sparse step applies them.
            parameters = request_parameters(request.parameters())
            parse_request_options(parameters, _ANY_OPTIONS)
            options = parse_text_options(parameters, self.defaults)
        except ValueError as e:
            return None, None, str(e)
        if options.overflow == "chunk" and not self.chunking:
            return None, None, (f"overflow 'chunk' is not served by this pipeline ({self.name}): use 'truncate' "
                                "or 'error'")
        raw = pb_utils.get_input_tensor_by_name(request, "text").as_numpy().reshape(-1)
        items = [item if isinstance(item, bytes) else str(item).encode() for item in raw]
        total, request_limit = sum(len(data) for data in items), self.settings["max_request_bytes"]
        if total > request_limit:
            return None, None, (
                f"the request's texts are {total} bytes in total; the limit is {request_limit} bytes (max_request_bytes)"
            )
        # Chunked texts are encoded whole: bounded by the request's bytes and
        # max_windows. Elsewhere tokens past max_length are thrown away, so a
        # text is bounded on its own.
        limit = self.settings["max_text_bytes"]
        texts = []
        for i, data in enumerate(items):
            if len(data) > limit and options.overflow != "chunk":
                return None, None, f"text {i} is {len(data)} bytes; the limit is {limit} bytes (max_text_bytes)"
            try:
                texts.append(data.decode("utf-8"))
            except UnicodeDecodeError as e:
                return None, None, f"text {i} is not valid UTF-8: {e.reason} at byte {e.start}"
        return options, texts, None

    def _tensors(self, options: TextOptions, encodings) -> list:
        side = options.input_type
        length = self.lengths[side]
        try:
            rows = cut(encodings, options.overflow, length, self.n_special[side], self.settings["chunk_overlap"],
                       options.truncation_direction)
        except TextTooLong as e:
            raise ValueError(f"{e} tokens (input_type {side}); send overflow 'truncate' or 'chunk' to encode it") from None
        if len(rows.rows) > self.settings["max_windows"]:
            raise ValueError(f"the request's texts make {len(rows.rows)} windows of up to {length} tokens; the limit "
                             f"is {self.settings['max_windows']} per request (max_windows): send fewer or shorter texts")
        # Each request is padded to its own longest row, rounded up to a
        # multiple of pad_to_multiple_of, never past its max_length (a
        # fixed-shape encoder's profile ends there). For a TensorRT encoder
        # that multiple is the bucket width: requests of one bucket share a
        # shape and batch together in the encoder's dynamic batcher.
        # The CPU encoder regroups the rows of all requests by length itself.
        # At least one column: a text without tokens (an empty query of a side
        # without special tokens) is a row of padding.
        longest = max(1, max(map(len, rows.rows)))
        ids, mask = pad_ids(rows.rows, round_length(longest, self.settings["pad_to_multiple_of"], length))
        tensors = {
            "input_ids": ids,
            "attention_mask": mask,
            "text_index": rows.text_index.reshape(-1, 1),
            "num_tokens": rows.num_tokens.reshape(-1, 1),
            "truncated": rows.truncated.reshape(-1, 1),
            "windows": rows.windows.reshape(-1, 1),
        }
        return [pb_utils.Tensor(name, value) for name, value in tensors.items() if name in self.outputs]

    def execute(self, requests):
        parsed, groups = [], {}
        for request in requests:
            options, texts, error = self._texts(request)
            if error:
                parsed.append((None, 0, 0, error))
                continue
            key = (options.input_type, options.truncation_direction)
            group = groups.setdefault(key, [])
            parsed.append((options, len(group), len(texts), None))
            group.extend(texts)
        # All texts of one side and direction in one call.
        encodings = {
            (side, direction): self._tokenizer(side, direction).encode_batch(texts, add_special_tokens=self.special[side])
            for (side, direction), texts in groups.items()
        }
        responses = []
        for options, start, count, error in parsed:
            if error is None:
                chunk = encodings[(options.input_type, options.truncation_direction)][start : start + count]
                try:
                    responses.append(pb_utils.InferenceResponse(output_tensors=self._tensors(options, chunk)))
                    continue
                except ValueError as e:
                    error = str(e)
            responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(error, pb_utils.TritonError.INVALID_ARG)))
        return responses
