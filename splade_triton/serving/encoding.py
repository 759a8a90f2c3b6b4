"""Run the fused ONNX encoder over ragged batches: the encoder model's core, without Triton."""

from __future__ import annotations

import numpy as np

from splade_triton.serving.batching import plan_chunks
from splade_triton.serving.tokens import pad_segments

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
        if not batches:
            return []
        if len(batches) == 1:
            ids, mask = batches[0]
            if ids.shape[0] * ids.shape[1] <= self.max_batch_tokens and mask.all():
                # One request without padding (a lone text): nothing to regroup.
                pooled = self._output(ids.shape[0])
                feeds = {"input_ids": ids.astype(np.int64, copy=False), "attention_mask": mask.astype(np.int64, copy=False)}
                pooled[:] = self.session.run(None, feeds)[0]
                return [pooled]
        # Every text's tokens, padding stripped, end to end (row-major order
        # keeps each row's tokens in order); no per-row Python loop.
        keeps = [mask.astype(bool, copy=False) for _, mask in batches]
        flat = np.concatenate([ids[keep] for (ids, _), keep in zip(batches, keeps)]).astype(np.int64, copy=False)
        lengths = np.concatenate([keep.sum(axis=1) for keep in keeps]).astype(np.int64, copy=False)
        starts = np.zeros(lengths.size, dtype=np.int64)
        np.cumsum(lengths[:-1], out=starts[1:])
        pooled = self._output(lengths.size)
        for chunk in plan_chunks(lengths, self.max_batch_tokens):
            ids, mask = pad_segments(flat, starts[chunk], lengths[chunk])
            pooled[chunk] = self.session.run(None, {"input_ids": ids, "attention_mask": mask})[0]
        out, start = [], 0
        for ids, _ in batches:
            out.append(pooled[start : start + ids.shape[0]])
            start += ids.shape[0]
        return out
