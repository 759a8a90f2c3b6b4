"""Floating-point work of a BERT masked LM with SPLADE pooling, and the machine's GEMM peak."""

from __future__ import annotations

import time

import numpy as np


def flops_per_text(config, tokens: int) -> float:
    """FLOPs (2 per multiply-add) to encode one text of ``tokens`` tokens.

    Counts the matrix products: per layer the Q/K/V/output projections
    (4 h^2 per token), the attention scores and mixing (2 L h per token), the
    feed-forward (2 h i per token); then the MLM head's transform (h^2) and its
    vocabulary projection (h V) for every token, since SPLADE pools over all of
    them. Element-wise work (softmax, GELU, LayerNorm, max) is left out.
    """
    h, i, v, layers = config.hidden_size, config.intermediate_size, config.vocab_size, config.num_hidden_layers
    per_token = layers * (4 * h * h + 2 * tokens * h + 2 * h * i) + h * h + h * v
    return 2.0 * tokens * per_token


def numpy_gemm_gflops(n: int = 2048, repeat: int = 5) -> float:
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    b = a.T.copy()
    a @ b  # warm-up
    best = min(_timed(lambda: a @ b) for _ in range(repeat))
    return 2 * n**3 / best / 1e9


def onnxruntime_gemm_gflops(threads: int, n: int = 2048, repeat: int = 5) -> float:
    """fp32 MatMul through ONNX Runtime's own kernels (AVX-512 where the CPU has it)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])],
        "gemm",
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, [n, n]) for x in ("a", "b")],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    feeds = {x: np.random.default_rng(1).standard_normal((n, n), dtype=np.float32) for x in ("a", "b")}
    session.run(None, feeds)
    best = min(_timed(lambda: session.run(None, feeds)) for _ in range(repeat))
    return 2 * n**3 / best / 1e9


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start
