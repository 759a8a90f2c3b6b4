"""The query and document sides of a pipeline, as its export describes them.

A request's ``input_type`` picks a side. Each side has its own encoder:

- ``mlm``: an ONNX graph in the version folder (one shared by both sides for
  a symmetric model; two for a query/document pair such as efficient-splade),
  whose pooled output goes through the side's ``activation``;
- ``static``: a weight per vocabulary token (an inference-free query side:
  OpenSearch's idf.json, sentence-transformers' SparseStaticEmbedding): the
  text's vector is the weight of each distinct token it contains, looked up
  in numpy, no transformer run. Its weights are final (``identity``).

export_info.json (python -m export.export_onnx) carries them:

    "sides": {"query":    {"encoder": "static", "weights": "query_weights.npy", "special_tokens": false, ...},
              "document": {"encoder": "mlm", "graph": "model.onnx", "activation": "log1p_log1p_relu", ...}}

An export without "sides" (every symmetric SPLADE or BGE-M3 model) has the
same encoder on both: ``model.onnx``, log1p(relu), special tokens added.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

__all__ = ["SIDES", "Side", "read_export_info", "read_sides"]

SIDES = ("query", "document")
ENCODERS = ("mlm", "static")
_ACTIVATIONS = ("log1p_relu", "log1p_log1p_relu")  # splade.ACTIVATIONS minus identity (static sides' own)


@dataclass(frozen=True)
class Side:
    encoder: str = "mlm"
    graph: str | None = "model.onnx"  # mlm: the ONNX file
    weights: str | None = None  # static: a float32 [vocab] .npy file
    activation: str = "log1p_relu"  # mlm: of the pooled logits; static: identity
    special_tokens: bool = True  # whether tokenization adds [CLS] / [SEP] (or <s> / </s>)
    max_length: int | None = None  # the side's truncation length, if the export knows it


def read_export_info(folder) -> dict | None:
    """export_info.json of a version folder, or None where there is none."""
    path = os.path.join(os.fspath(folder), "export_info.json")
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read {path}: {e}") from None


def _side(name: str, spec, where: str) -> Side:
    if not isinstance(spec, dict):
        raise ValueError(f"{where}: sides.{name} must be an object, got {spec!r}")
    encoder = spec.get("encoder", "mlm")
    if encoder not in ENCODERS:
        raise ValueError(f"{where}: sides.{name}.encoder must be one of {', '.join(ENCODERS)}, got {encoder!r}")
    length = spec.get("max_length")
    if length is not None and (isinstance(length, bool) or not isinstance(length, int) or length < 1):
        raise ValueError(f"{where}: sides.{name}.max_length must be an integer >= 1, got {length!r}")
    special = spec.get("special_tokens", encoder == "mlm")
    if not isinstance(special, bool):
        raise ValueError(f"{where}: sides.{name}.special_tokens must be true or false, got {special!r}")
    if encoder == "static":
        weights = spec.get("weights")
        if not isinstance(weights, str) or not weights:
            raise ValueError(f"{where}: sides.{name} is static but names no weights file")
        return Side("static", None, weights, "identity", special, length)
    graph, activation = spec.get("graph", "model.onnx"), spec.get("activation", "log1p_relu")
    if not isinstance(graph, str) or not graph:
        raise ValueError(f"{where}: sides.{name}.graph must name an ONNX file, got {graph!r}")
    if activation not in _ACTIVATIONS:
        raise ValueError(f"{where}: sides.{name}.activation must be one of {', '.join(_ACTIVATIONS)}, got {activation!r}")
    return Side("mlm", graph, None, activation, special, length)


def read_sides(info: dict | None, where: str = "export_info.json") -> dict[str, Side]:
    """{"query": Side, "document": Side} from an export's info (None: the symmetric default)."""
    sides = (info or {}).get("sides")
    if sides is None:
        return {name: Side() for name in SIDES}
    if not isinstance(sides, dict) or set(sides) != set(SIDES):
        raise ValueError(f"{where}: sides must have exactly the keys query and document, got {sides!r}")
    return {name: _side(name, sides[name], where) for name in SIDES}
