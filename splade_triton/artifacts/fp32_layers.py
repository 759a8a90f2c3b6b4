"""Which layers an FP16 TensorRT engine keeps in FP32.

``select_fp32_layers`` is a pure function over a layer graph (``Layer``), so
the rule is tested on the real ONNX graph (``layers_from_onnx``) without
TensorRT; ``export.build_engine`` applies it to the parsed network.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

__all__ = ["DEFAULT_FP32_GROUPS", "FP16_MAX", "FP32_GROUPS", "Fp32Selection", "Layer", "layers_from_onnx", "select_fp32_layers"]

FP16_MAX = 65504.0

FP32_GROUPS = ("normalization", "softmax", "attention_mask", "pooling", "decoder")
# "decoder" (the vocabulary projection itself in FP32) is off by default: it is
# the largest matrix product of the model, ~15x slower without FP16 tensor
# cores, and its FP32 accumulation already happens in FP16 mode.
DEFAULT_FP32_GROUPS = ("normalization", "softmax", "attention_mask", "pooling")


@dataclass(frozen=True)
class Layer:
    """One layer of a network graph, as much as the FP32 selection needs."""

    name: str
    kind: str  # normalization, softmax, matmul, reduce, constant, elementwise, select, ... other
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    float_outputs: tuple[bool, ...] = ()  # per output: FP32/FP16 (precision applies) or not
    constant_absmax: float | None = None  # constants: largest magnitude (inf allowed)

    @property
    def has_float_output(self) -> bool:
        return any(self.float_outputs)


@dataclass
class Fp32Selection:
    """Layers to compute in FP32 (by group) and layers whose output only is FP32."""

    groups: dict[str, list[str]] = field(default_factory=dict)
    output_only: list[str] = field(default_factory=list)

    def compute(self) -> list[str]:
        seen, names = set(), []
        for group in self.groups.values():
            for name in group:
                if name not in seen:
                    seen.add(name)
                    names.append(name)
        return names

    def summary(self) -> dict:
        """Counts per group, as recorded in the provenance."""
        return {**{g: len(n) for g, n in self.groups.items()}, "fp32_output_only": len(self.output_only)}


def select_fp32_layers(layers: list[Layer], network_outputs, groups=DEFAULT_FP32_GROUPS) -> Fp32Selection:
    """The layers an FP16 engine keeps in FP32, by group.

    - normalization: every LayerNorm (its variance overflows FP16 easily);
    - softmax: every softmax (exp and the sum over up to 512 keys);
    - attention_mask: the additive attention mask, from a constant beyond
      FP16's range (transformers uses float32's lowest, -3.4e38) to where it
      is added to the scores, so it is never rounded to -inf or clamped;
    - pooling: the graph's tail from the output back to the vocabulary
      projection (the max over tokens and the bias add, FP32 in and out), and
      that projection's output type, so logits are not rounded to FP16 before
      the max (log1p(relu(.)) then runs in FP32 in the sparsify model);
    - decoder: the vocabulary projection computed in FP32 as well.

    Raises ValueError when a requested group finds nothing, so a differently
    shaped graph fails the build instead of silently running in FP16.
    """
    unknown = set(groups) - set(FP32_GROUPS)
    if unknown:
        raise ValueError(f"unknown FP32 group(s) {', '.join(sorted(unknown))}; known: {', '.join(FP32_GROUPS)}")
    by_name = {layer.name: layer for layer in layers}
    producer = {out: layer for layer in layers for out in layer.outputs}
    consumers = defaultdict(list)
    for layer in layers:
        for tensor in layer.inputs:
            consumers[tensor].append(layer)
    selection = Fp32Selection()

    def floats(names):
        return [n for n in names if by_name[n].has_float_output]

    if "normalization" in groups:
        selection.groups["normalization"] = [l.name for l in layers if l.kind == "normalization"]
    if "softmax" in groups:
        selection.groups["softmax"] = [l.name for l in layers if l.kind == "softmax"]
    if "attention_mask" in groups:
        seeds = [l for l in layers if l.kind == "constant" and l.constant_absmax is not None and l.constant_absmax > FP16_MAX]
        region, stack = [], list(seeds)
        seen = {l.name for l in seeds}
        while stack:
            layer = stack.pop()
            region.append(layer.name)
            for out in layer.outputs:
                for nxt in consumers[out]:
                    # Stop where the bias has been consumed: softmax (itself
                    # FP32), a normalization, or a matrix product.
                    if nxt.name in seen or nxt.kind in ("softmax", "normalization", "matmul"):
                        continue
                    seen.add(nxt.name)
                    stack.append(nxt)
        selection.groups["attention_mask"] = floats(sorted(region, key=list(by_name).index))
    if "pooling" in groups or "decoder" in groups:
        tail, projections, stack, seen = [], [], [], set()
        for out in network_outputs:
            if out in producer:
                stack.append(producer[out])
        while stack:
            layer = stack.pop()
            if layer.name in seen:
                continue
            seen.add(layer.name)
            if layer.kind == "matmul":
                projections.append(layer.name)
                continue
            if layer.kind in ("normalization", "softmax"):
                raise ValueError(f"no matrix product between the output and {layer.kind} layer {layer.name!r}: unexpected graph")
            tail.append(layer.name)
            stack.extend(producer[t] for t in layer.inputs if t in producer)
        if not projections or len(tail) > 32:
            raise ValueError("the pooling tail (output back to the vocabulary projection) was not found: unexpected graph")
        order = list(by_name).index
        if "pooling" in groups:
            selection.groups["pooling"] = floats(sorted(tail, key=order))
            selection.output_only = sorted(projections, key=order)
        if "decoder" in groups:
            selection.groups["decoder"] = sorted(projections, key=order)
            selection.output_only = []
    empty = [g for g, names in selection.groups.items() if not names]
    if empty:
        raise ValueError(f"no layer found for FP32 group(s) {', '.join(empty)}: unexpected graph")
    return selection


_ONNX_KINDS = {
    "LayerNormalization": "normalization",
    "Softmax": "softmax",
    "MatMul": "matmul",
    "Gemm": "matmul",
    "ReduceMax": "reduce",
    "ReduceMean": "reduce",
    "ReduceSum": "reduce",
    "Constant": "constant",
    "Where": "select",
    "Add": "elementwise",
    "Sub": "elementwise",
    "Mul": "elementwise",
    "Div": "elementwise",
}


def layers_from_onnx(model) -> tuple[list[Layer], list[str]]:
    """The layer graph of an ONNX model (initializers as constant layers).

    TensorRT's parser maps ONNX nodes to layers nearly one to one (named after
    the nodes), so the selection computed here is what an engine build pins;
    ``python -m export.build_engine --dry-run`` prints it.
    """
    import numpy as np
    import onnx
    from onnx import numpy_helper

    inferred = onnx.shape_inference.infer_shapes(model)
    graph = inferred.graph
    float_types = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE}
    elem = {v.name: v.type.tensor_type.elem_type for v in [*graph.value_info, *graph.input, *graph.output]}

    def absmax(array):
        array = np.asarray(array)
        if array.dtype.kind != "f" or array.size == 0:
            return None, False
        return float(np.abs(array).max()), True

    layers = []
    for init in graph.initializer:
        value, is_float = absmax(numpy_helper.to_array(init))
        layers.append(Layer(init.name, "constant", (), (init.name,), (is_float,), value))
    for node in graph.node:
        if node.op_type == "Constant":
            value, is_float = absmax(numpy_helper.to_array(node.attribute[0].t)) if node.attribute[0].t.ByteSize() else (None, False)
            layers.append(Layer(node.name or node.output[0], "constant", (), tuple(node.output), (is_float,), value))
            continue
        kind = _ONNX_KINDS.get(node.op_type, node.op_type.lower())
        outputs = tuple(node.output)
        layers.append(Layer(node.name, kind, tuple(i for i in node.input if i), outputs,
                            tuple(elem.get(o) in float_types for o in outputs)))
    return layers, [o.name for o in graph.output]
