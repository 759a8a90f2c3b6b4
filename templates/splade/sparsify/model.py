"""Triton Python model: SPLADE activation and sparsification."""

from __future__ import annotations

import triton_python_backend_utils as pb_utils

from splade_triton.serving.sparse_step import SPARSE_OUTPUTS, SparseStep
from splade_triton.serving.splade import activate, sparsify


class TritonPythonModel(SparseStep):
    STEP = "sparsify"

    def tensors(self, request, options, wanted):
        pooled = pb_utils.get_input_tensor_by_name(request, "pooled_logits").as_numpy()
        # The sparse outputs for <name>, the vocabulary-wide vector for <name>_embedding.
        tensors = []
        if wanted & set(SPARSE_OUTPUTS):
            tensors += self.sparse_tensors(sparsify(pooled, top_k=options.top_k, min_weight=options.min_weight), wanted)
        if "embedding" in wanted:
            tensors.append(pb_utils.Tensor("embedding", activate(pooled)))
        return tensors
