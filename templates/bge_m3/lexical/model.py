"""Triton Python model: BGE-M3 lexical weights from per-token weights."""

from __future__ import annotations

import os
import sys

import triton_python_backend_utils as pb_utils

# This folder's own copy of splade_triton (placed by the repository assembly) before any other:
# the stub puts the server's working directory first on sys.path.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from splade_triton.serving.bge_m3 import SPECIAL_TOKENS, lexical_weights, read_export_info
from splade_triton.serving.sparse_step import SPARSE_OUTPUTS, SparseStep


class TritonPythonModel(SparseStep):
    STEP = "lexical"

    def setup(self):
        info = read_export_info(os.path.join(self.version, "export_info.json"))
        self.special_ids = sorted({info["special_ids"][k] for k in SPECIAL_TOKENS})

    def tensors(self, request, options, wanted, text):
        if not wanted & set(SPARSE_OUTPUTS):
            return []
        ids = pb_utils.get_input_tensor_by_name(request, "input_ids").as_numpy()
        weights = pb_utils.get_input_tensor_by_name(request, "token_weights").as_numpy()
        sparse = lexical_weights(ids, weights, self.special_ids, top_k=options.top_k, min_weight=options.min_weight)
        return self.sparse_tensors(sparse, wanted)
