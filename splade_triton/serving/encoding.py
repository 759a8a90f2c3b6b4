"""Run the fused ONNX encoder over ragged batches: the encoder model's core, without Triton."""

from __future__ import annotations

import numpy as np

from splade_triton.serving.batching import plan_chunks

__all__ = ["RaggedEncoder"]


class RaggedEncoder:
    """Encode texts of many requests, each request padded to its own length.

    Every text's padding is stripped, texts are regrouped by length across all
    requests and run in ONNX Runtime calls of at most ``max_batch_tokens``
    (texts x padded length); results come back in request order.
    """

    def __init__(self, session, max_batch_tokens: int):
        self.session = session
        self.max_batch_tokens = max_batch_tokens
        self.vocab_size = session.get_outputs()[0].shape[-1]
        self._buffer = np.empty((0, self.vocab_size), dtype=np.float32)

    def _output(self, rows: int) -> np.ndarray:
        # Reused across calls: first touch of fresh pages is slow on these VMs.
        # Safe because Triton copies each response before the next execute().
        if self._buffer.shape[0] < rows:
            self._buffer = np.empty((max(rows, 2 * self._buffer.shape[0]), self.vocab_size), dtype=np.float32)
        return self._buffer[:rows]

    def encode(self, batches: list[tuple[np.ndarray, np.ndarray]]) -> list[np.ndarray]:
        """[(input_ids, attention_mask) of shape [n_i, L_i]] -> [pooled logits [n_i, vocab]].

        Token positions are those where the mask is non-zero; every text must
        have at least one (the tokenizer always adds [CLS] and [SEP]).
        """
        rows = []
        for ids, mask in batches:
            keep = mask.astype(bool, copy=False)
            rows.extend(row[k] for row, k in zip(ids, keep))
        lengths = np.fromiter((r.size for r in rows), dtype=np.int64, count=len(rows))
        pooled = self._output(len(rows))
        for chunk in plan_chunks(lengths, self.max_batch_tokens):
            width = int(lengths[chunk].max())
            ids = np.zeros((chunk.size, width), dtype=np.int64)
            mask = np.zeros((chunk.size, width), dtype=np.int64)
            for j, i in enumerate(chunk):
                ids[j, : lengths[i]] = rows[i]
                mask[j, : lengths[i]] = 1
            pooled[chunk] = self.session.run(None, {"input_ids": ids, "attention_mask": mask})[0]
        out, start = [], 0
        for ids, _ in batches:
            out.append(pooled[start : start + ids.shape[0]])
            start += ids.shape[0]
        return out
