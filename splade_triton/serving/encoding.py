"""Run an ONNX encoder over ragged batches: the encoder model's core, without Triton."""

from __future__ import annotations

import numpy as np

from splade_triton.serving.batching import plan_chunks, row_cost
from splade_triton.serving.tokens import pad_segments

__all__ = ["RaggedEncoder"]


class RaggedEncoder:
    """Encode texts of many requests, each request padded to its own length.

    Every text's padding is stripped, texts are regrouped by length across all
    requests and run in ONNX Runtime calls of at most ``max_batch_tokens``
    (texts x padded length, each row weighed by ``batching.row_cost`` where the
    runtime materialises attention); results come back in request order.

    A graph's outputs are per text (``[n, ...]``: SPLADE's pooled logits,
    BGE-M3's dense vector) or per token: ``token_outputs`` names those, each
    with the number of leading positions its graph drops (``[n, L - drop, ...]``:
    BGE-M3's token weights drop 0, its ColBERT vectors drop the ``<s>``, 1).
    A per-token output comes back to each request padded to the request's own
    length (``[n_i, L_i - drop, ...]``): every text's values left-aligned in
    token order, zeros after them, whatever the text was batched with.
    """

    def __init__(self, session, max_batch_tokens: int, token_outputs: dict[str, int] | None = None,
                 attention: int = 0):
        self.session = session
        self.max_batch_tokens = max_batch_tokens
        # > 0: the runtime holds each text's attention scores (batching.attention_length).
        self.attention = attention
        self.output_names = [o.name for o in session.get_outputs()]
        self.token_outputs = dict(token_outputs or {})
        unknown = sorted(set(self.token_outputs) - set(self.output_names))
        if unknown:
            raise ValueError(f"the graph has no output(s) {unknown}; its outputs are {self.output_names}")
        if any(not isinstance(d, int) or d < 0 for d in self.token_outputs.values()):
            raise ValueError(f"token_outputs: the positions dropped must be integers >= 0, got {self.token_outputs}")
        self.vocab_size = session.get_outputs()[0].shape[-1]  # SPLADE: the pooled logits' width
        self._buffers: dict[str, np.ndarray] = {}

    def _rows(self, name: str, rows: int, like: np.ndarray) -> np.ndarray:
        # Per-text outputs land in buffers reused across calls: first touch of
        # fresh pages is slow on these VMs. Safe because Triton copies each
        # response before the next execute().
        buffer = self._buffers.get(name)
        if buffer is None or buffer.shape[1:] != like.shape[1:] or buffer.dtype != like.dtype or buffer.shape[0] < rows:
            size = rows if buffer is None or buffer.shape[1:] != like.shape[1:] else max(rows, 2 * buffer.shape[0])
            buffer = self._buffers[name] = np.empty((size, *like.shape[1:]), dtype=like.dtype)
        return buffer[:rows]

    def encode(self, batches: list[tuple[np.ndarray, np.ndarray]]) -> list[np.ndarray]:
        """[(input_ids, attention_mask) of shape [n_i, L_i]] -> [the graph's first output [n_i, ...]].

        SPLADE's fused graph: the pooled logits [n_i, vocab] of each request.
        """
        name = self.output_names[0]
        return [outputs[name] for outputs in self.run(batches, [name])]

    def run_isolated(self, batches: list[tuple[np.ndarray, np.ndarray]], names=None) -> list[dict[str, np.ndarray] | Exception]:
        """``run``, where a failure fails only the requests that fail on their own.

        When the whole batch raises, each request runs alone: its outputs, or
        the exception it raised alone (one bad request must not fail the
        requests Triton batched with it).
        """
        try:
            return self.run(batches, names)
        except Exception as error:  # noqa: BLE001 (whatever the runtime raises)
            if len(batches) == 1:
                return [error]
        results: list[dict[str, np.ndarray] | Exception] = []
        for batch in batches:
            try:
                (result,) = self.run([batch], names)
            except Exception as error:  # noqa: BLE001
                results.append(error)
                continue
            # Copied: the next run reuses the per-text buffers these are views of.
            results.append({name: value.copy() for name, value in result.items()})
        return results

    def run(self, batches: list[tuple[np.ndarray, np.ndarray]], names=None) -> list[dict[str, np.ndarray]]:
        """[(input_ids, attention_mask) [n_i, L_i]] -> per request {output name: array}.

        ``names``: the outputs wanted (default all); the others are not copied
        out of ONNX Runtime. Token positions are those where the mask is
        non-zero; every text must have at least one (tokenizers add special
        tokens).
        """
        names = list(self.output_names if names is None else names)
        missing = sorted(set(names) - set(self.output_names))
        if missing:
            raise ValueError(f"the graph has no output(s) {missing}; its outputs are {self.output_names}")
        if not batches:
            return []
        if len(batches) == 1:
            ids, mask = batches[0]
            if ids.shape[0] * row_cost(ids.shape[1], self.attention) <= self.max_batch_tokens and mask.all():
                # One request without padding (a lone text): nothing to regroup.
                feeds = {"input_ids": ids.astype(np.int64, copy=False), "attention_mask": mask.astype(np.int64, copy=False)}
                out = {}
                for name, value in zip(names, self.session.run(names, feeds)):
                    if name in self.token_outputs:
                        out[name] = value
                    else:
                        out[name] = self._rows(name, ids.shape[0], value)
                        out[name][:] = value
                return [out]
        # Every text's tokens, padding stripped, end to end (row-major order
        # keeps each row's tokens in order); no per-row Python loop.
        keeps = [mask.astype(bool, copy=False) for _, mask in batches]
        flat = np.concatenate([ids[keep] for (ids, _), keep in zip(batches, keeps)]).astype(np.int64, copy=False)
        lengths = np.concatenate([keep.sum(axis=1) for keep in keeps]).astype(np.int64, copy=False)
        starts = np.zeros(lengths.size, dtype=np.int64)
        np.cumsum(lengths[:-1], out=starts[1:])
        # Per-token outputs: each text's rows end to end, as its tokens are in ``flat``.
        counts = {n: np.maximum(lengths - self.token_outputs[n], 0) for n in names if n in self.token_outputs}
        token_starts = {}
        for name, count in counts.items():
            token_starts[name] = np.zeros(count.size, dtype=np.int64)
            np.cumsum(count[:-1], out=token_starts[name][1:])
        per_text: dict[str, np.ndarray] = {}
        per_token: dict[str, np.ndarray] = {}
        for chunk in plan_chunks(lengths, self.max_batch_tokens, attention=self.attention):
            ids, mask = pad_segments(flat, starts[chunk], lengths[chunk])
            values = self.session.run(names, {"input_ids": ids, "attention_mask": mask})
            for name, value in zip(names, values):
                if name not in counts:
                    if name not in per_text:
                        per_text[name] = self._rows(name, lengths.size, value)
                    per_text[name][chunk] = value
                    continue
                if name not in per_token:
                    per_token[name] = np.empty((int(counts[name].sum()), *value.shape[2:]), dtype=value.dtype)
                positions = np.arange(value.shape[1], dtype=np.int64)
                valid = positions < counts[name][chunk][:, None]
                per_token[name][(token_starts[name][chunk][:, None] + positions)[valid]] = value[valid]
        out, start = [], 0
        for ids, _ in batches:
            n = ids.shape[0]
            rows = slice(start, start + n)
            result = {name: per_text[name][rows] for name in per_text}
            for name, flat_values in per_token.items():
                width = max(ids.shape[1] - self.token_outputs[name], 0)
                positions = np.arange(width, dtype=np.int64)
                valid = positions < counts[name][rows][:, None]
                padded = np.zeros((n, width, *flat_values.shape[1:]), dtype=flat_values.dtype)
                padded[valid] = flat_values[(token_starts[name][rows][:, None] + positions)[valid]]
                result[name] = padded
            out.append(result)
            start += n
        return [{name: result[name] for name in names} for result in out]
