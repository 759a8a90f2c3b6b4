"""Triton Python model: SPLADE activation and sparsification, one vector per text.

The rows it gets are the encoder's: one per text, or one per window of a
chunked text (``text_index`` names each row's text). A text's vector is the
max over its windows of the pooled logits (SPLADE's own max, taken across
windows as across tokens), then the activation of the request's side
(export_info.json ``sides``: log1p(relu), OpenSearch v3's log1p(log1p(relu)),
or none for a static query side's weights).
"""

from __future__ import annotations

import os
import sys

import triton_python_backend_utils as pb_utils

# This folder's own copy of splade_triton (placed by the repository assembly) before any other:
# the stub puts the server's working directory first on sys.path.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from splade_triton.serving.sides import read_export_info, read_sides
from splade_triton.serving.sparse_step import SPARSE_OUTPUTS, SparseStep
from splade_triton.serving.splade import activate, max_over_windows, sparsify

WINDOW_OUTPUTS = tuple(f"window_{name}" for name in SPARSE_OUTPUTS)


class TritonPythonModel(SparseStep):
    STEP = "sparsify"

    def setup(self):
        self.sides = read_sides(read_export_info(self.version), os.path.join(self.version, "export_info.json"))

    def tensors(self, request, options, wanted, text):
        activation = self.sides[text.input_type].activation
        rows = pb_utils.get_input_tensor_by_name(request, "pooled_logits").as_numpy()
        index = pb_utils.get_input_tensor_by_name(request, "text_index")
        pooled = max_over_windows(rows, None if index is None else index.as_numpy().reshape(-1))
        # The sparse outputs for <name>, the vocabulary-wide vector for
        # <name>_embedding, each window's for <name>_windows.
        tensors = []
        if wanted & set(SPARSE_OUTPUTS):
            sparse = sparsify(pooled, top_k=options.top_k, min_weight=options.min_weight, activation=activation)
            tensors += self.sparse_tensors(sparse, wanted)
        if wanted & set(WINDOW_OUTPUTS):
            sparse = sparsify(rows, top_k=options.top_k, min_weight=options.min_weight, activation=activation)
            tensors += self.sparse_tensors(sparse, wanted, prefix="window_")
        if "embedding" in wanted:
            tensors.append(pb_utils.Tensor("embedding", activate(pooled, activation=activation)))
        return tensors
