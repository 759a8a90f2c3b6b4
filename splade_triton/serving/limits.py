"""What one request to the encoder may hold: checked per request, before any batch runs.

The tokenizer step only makes valid input, but a client may call the encoder
model directly. Unchecked, a token id past the vocabulary or a text longer
than the position embeddings makes ONNX Runtime raise, which would fail every
request Triton batched with it; a negative id (and, under OpenVINO, an id past
the vocabulary) silently reads another row. So each request is checked on its
own (``check_tokens``) and a bad one gets its own error naming what is wrong.

The limits come from the export (export_info.json ``vocab_size``,
``max_length``) or, where it states no length (SPLADE exports), from the
graph itself (``probe_max_length``).
"""

from __future__ import annotations

import math

import numpy as np

from splade_triton.serving.batching import row_cost

__all__ = ["check_budget", "check_tokens", "head_dim", "probe_max_length", "vocabulary_size", "max_length"]

# Longest text the probe tries: a graph that runs it is taken as unbounded.
PROBE_CAP = 8192


def check_tokens(ids: np.ndarray, mask: np.ndarray, vocab_size: int | None, max_length: int | None,
                 allow_empty: bool = False) -> str | None:
    """Why one request's (input_ids, attention_mask) cannot be encoded, or None when it can.

    Checked: INT64 tensors of one 2-D shape [texts, tokens]; a mask of 0 and 1;
    at least one token per text (unless ``allow_empty``: a static side's empty
    text is an empty vector); at most ``max_length`` tokens per text (its
    padding aside); every token id (padding aside) in 0 <= id < ``vocab_size``.
    Messages name positions and limits, never a text's content.
    """
    for name, a in (("input_ids", ids), ("attention_mask", mask)):
        if a.dtype != np.int64:
            return f"{name} must be INT64, got {a.dtype}"
    if ids.ndim != 2 or ids.shape != mask.shape:
        return (f"input_ids {list(ids.shape)} and attention_mask {list(mask.shape)} "
                "must have the same 2-D shape [texts, tokens]")
    if ((mask != 0) & (mask != 1)).any():
        return "attention_mask must hold only 0 and 1"
    keep = mask.astype(bool)
    counts = keep.sum(axis=1)
    if not allow_empty and (counts == 0).any():
        return f"text {int(np.argmax(counts == 0))} has no token with attention_mask 1; every text needs at least one"
    if max_length is not None and (counts > max_length).any():
        row = int(np.argmax(counts > max_length))
        return (f"text {row} has {int(counts[row])} tokens; this encoder takes at most {max_length} "
                f"(max_text_tokens: the tokenizer's longest side, within the model's position embeddings)")
    bad = keep & ((ids < 0) if vocab_size is None else ((ids < 0) | (ids >= vocab_size)))
    if bad.any():
        row, col = (int(i) for i in np.argwhere(bad)[0])
        bounds = "0 <= id" if vocab_size is None else f"0 <= id < {vocab_size}"
        return f"text {row}, position {col}: token id {int(ids[row, col])} is outside the vocabulary ({bounds})"
    return None


def vocabulary_size(info: dict | None, session) -> int | None:
    """The export's ``vocab_size``, else a SPLADE graph's pooled-logits width, else None (unknown)."""
    size = (info or {}).get("vocab_size")
    if isinstance(size, int) and not isinstance(size, bool) and size > 0:
        return size
    widths = [o.shape[-1] for o in session.get_outputs() if o.name == "pooled_logits"]
    return widths[0] if widths and isinstance(widths[0], int) else None


def _quiet(session):
    """ONNX Runtime options that keep an expected failure of a probe out of the server's log."""
    try:
        import onnxruntime
    except ImportError:
        return ()
    if not isinstance(session, onnxruntime.InferenceSession):
        return ()
    options = onnxruntime.RunOptions()
    options.log_severity_level = 4  # fatal only
    return (options,)


def probe_max_length(session, token_id: int, cap: int = PROBE_CAP) -> int | None:
    """The longest one-text input the graph runs (its position embeddings), or None up to ``cap``.

    Runs the graph on single texts of ``token_id`` (a non-padding id: XLM-R
    numbers only non-padding tokens): lengths double until one fails, then
    bisect. Past its position table a BERT or XLM-R graph fails at once, in its
    embeddings, so the failing runs cost little.
    """
    name = session.get_outputs()[0].name
    extra = _quiet(session)

    def runs(length: int) -> bool:
        feeds = {"input_ids": np.full((1, length), token_id, dtype=np.int64),
                 "attention_mask": np.ones((1, length), dtype=np.int64)}
        try:
            session.run([name], feeds, *extra)
        except Exception:  # noqa: BLE001 (any runtime's failure means: not this long)
            return False
        return True

    if not runs(1):
        raise ValueError("the graph fails on a one-token text; cannot find its length limit")
    good, bad = 1, 2
    while bad <= cap and runs(bad):
        good, bad = bad, bad * 2
    if bad > cap:
        return None
    while bad - good > 1:
        mid = (good + bad) // 2
        good, bad = (mid, bad) if runs(mid) else (good, mid)
    return good


def max_length(info: dict | None, session, vocab_size: int | None) -> int | None:
    """The export's ``max_length`` where it states one (BGE-M3), else probed from the graph."""
    length = (info or {}).get("max_length")
    if isinstance(length, int) and not isinstance(length, bool) and length > 0:
        return length
    # The vocabulary's last id: not BERT's or XLM-R's padding (0, 1).
    return probe_max_length(session, (vocab_size or 3) - 1)


def head_dim(info: dict | None) -> int:
    """Width of one attention head (export_info.json ``hidden_size`` / ``num_attention_heads``);
    64, BERT's and XLM-R's, where the export does not say."""
    info = info or {}
    hidden, heads = info.get("hidden_size"), info.get("num_attention_heads")
    if isinstance(hidden, int) and isinstance(heads, int) and heads > 0 and hidden % heads == 0:
        return hidden // heads
    return 64


def check_budget(longest: int | None, attention: int, max_batch_tokens: int, runtime: str) -> None:
    """Refuse (ValueError, for the load's log) a budget that the longest text this encoder
    accepts would exceed on its own: that text would run over it, unbounded by the setting."""
    if not longest:
        return
    need = math.ceil(row_cost(longest, attention))
    if need <= max_batch_tokens:
        return
    why = (f"costs {need} token-equivalents on {runtime}, which holds each text's [heads, L, L] attention "
           f"scores" if attention else f"is {longest} tokens")
    raise ValueError(
        f"max_batch_tokens {max_batch_tokens} is too small for the longest text this encoder accepts: "
        f"{longest} tokens (max_text_tokens, else the model's position embeddings) {why}. Raise "
        f"max_batch_tokens to {need}, lower the tokenizer's lengths (max_text_tokens follows them)"
        + ("" if not attention else ", or serve runtime openvino (fused attention: memory linear in the length)"))
