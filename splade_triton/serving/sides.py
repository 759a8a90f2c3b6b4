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

__all__ = ["DEFAULT_MAX_LENGTH", "SIDES", "Side", "effective_length", "read_export_info", "read_sides"]

SIDES = ("query", "document")
# A side's length where nothing sets one: BERT's 512 positions.
DEFAULT_MAX_LENGTH = 512
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


def effective_length(side: str, parameters, info: dict | None, default: int = DEFAULT_MAX_LENGTH,
                     where: str = "export_info.json") -> int:
    """The tokens a side's texts are cut to, special tokens included: the one rule of the
    tokenizer, the repository's assembly and the GPU engine profile.

    First of: the side's own setting (``query_max_length`` / ``document_max_length`` in
    ``parameters``, the settings made explicitly), ``max_length`` there, the export's length
    of the side (export_info.json ``sides``), ``default`` (the template's). Never beyond the
    export's ``max_length`` (its position embeddings): a setting beyond it is refused
    (ValueError naming it and ``where``), the export's side length and ``default`` are lowered to it.
    """
    limit = (info or {}).get("max_length")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 2):
        raise ValueError(f"{where}: max_length must be an integer >= 2, got {limit!r}")
    for name in (f"{side}_max_length", "max_length"):
        value = parameters.get(name)
        if value is not None:
            if limit is not None and value > limit:
                raise ValueError(f"{name} = {value} is beyond what the model serves: {limit} tokens "
                                 f"(max_length of {where}: its position embeddings)")
            return value
    length = read_sides(info, where)[side].max_length or default
    return length if limit is None else min(length, limit)
