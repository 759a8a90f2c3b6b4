"""Typed settings: config.pbtxt model parameters and per-request parameters.

Kept free of Triton imports so the parsing rules are unit-tested on their own.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from dataclasses import dataclass
from typing import Any, Callable

__all__ = [
    "Param", "read_model_parameters", "RequestOptions", "REQUEST_PARAMETERS", "parse_request_options",
    "resembles_ours", "TextOptions", "INPUT_TYPES", "OVERFLOWS", "DIRECTIONS", "parse_text_options",
]

# Parameters Triton itself understands in config.pbtxt; allowed beside ours.
_TRITON_PARAMETERS = {"EXECUTION_ENV_PATH", "FORCE_CPU_ONLY_INPUT_TENSORS"}


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


@dataclass(frozen=True)
class Param:
    """One model parameter: its type, default and an optional check."""

    type: type
    default: Any
    check: Callable[[Any], bool] | None = None
    rule: str = ""  # says what ``check`` requires, for the error message

    def parse(self, name: str, text: str) -> Any:
        try:
            value = _parse_bool(text) if self.type is bool else self.type(text.strip())
        except ValueError as e:
            raise ValueError(f"model parameter {name}={text!r}: not a valid {self.type.__name__} ({e})") from None
        if self.check is not None and not self.check(value):
            raise ValueError(f"model parameter {name}={text!r}: must be {self.rule}")
        return value


def read_model_parameters(model_config: dict, spec: dict[str, Param]) -> dict[str, Any]:
    """Read config.pbtxt ``parameters`` into typed values, defaults for the rest.

    An unknown name fails the load: a misspelt setting must not be silently ignored.
    """
    raw = {k: v.get("string_value", "") for k, v in model_config.get("parameters", {}).items()}
    unknown = sorted(set(raw) - set(spec) - _TRITON_PARAMETERS)
    if unknown:
        raise ValueError(
            f"unknown model parameter(s) {', '.join(unknown)} in model '{model_config.get('name')}'; "
            f"known: {', '.join(sorted(spec))}"
        )
    values = {}
    for name, param in spec.items():
        values[name] = param.parse(name, raw[name]) if name in raw else param.default
    return values


@dataclass(frozen=True)
class RequestOptions:
    top_k: int
    min_weight: float


_MAX_TOP_K = 2**31 - 1


# Every request parameter of every step: a look-alike of any of them is refused by all.
REQUEST_PARAMETERS = ("top_k", "min_weight", "input_type", "overflow", "truncation_direction")
_FOLDED = {re.sub(r"[^a-z0-9]", "", name.lower()): name for name in REQUEST_PARAMETERS}


def resembles_ours(name: str) -> str | None:
    """The request parameter ``name`` is probably a misspelling of, or None.

    Case, ``-``, ``_``, ``.`` and spaces are ignored ("top-k", "TopK",
    "min.weight"); a name that contains one of ours ("x-top-k", "top_k_max")
    or is within a typo of one (difflib ratio >= 0.75: "topk_", "tok_k",
    "min_wieght") resembles it.
    """
    folded = re.sub(r"[^a-z0-9]", "", str(name).lower())
    for ours_folded, ours in _FOLDED.items():
        if ours_folded in folded:
            return ours
    close = difflib.get_close_matches(folded, list(_FOLDED), n=1, cutoff=0.75)
    return _FOLDED[close[0]] if close else None


def request_parameters(parameters_json: str | dict) -> dict[str, Any]:
    """A request's parameters, refusing names that resemble ours but are not.

    Other names are ignored, so that headers a gateway forwards as request
    parameters (tritonserver ``--grpc-header-forward-pattern`` /
    ``--http-header-forward-pattern``: NVIDIA Cloud Functions, API gateways)
    do not fail requests; but a name that resembles ours (``top-k``,
    ``topK``, ``min_wieght``, ``input-type``: see resembles_ours) is refused,
    so that a misspelt option never silently does nothing. A dict is taken
    as already read (a step parses a request's parameters once).
    """
    if isinstance(parameters_json, dict):
        return parameters_json
    params = json.loads(parameters_json) if parameters_json else {}
    misspelt = sorted(name for name in params if name not in REQUEST_PARAMETERS and resembles_ours(name))
    if misspelt:
        hints = ", ".join(f"{name} (did you mean {resembles_ours(name)}?)" for name in misspelt)
        raise ValueError(
            f"unknown request parameter(s): {hints}; supported: {', '.join(REQUEST_PARAMETERS)}"
        )
    return params


def parse_request_options(parameters_json: str | dict, defaults: RequestOptions) -> RequestOptions:
    """Validate a request's ``top_k`` / ``min_weight`` (Triton request parameters).

    Raises ValueError with a message meant for the caller.
    """
    params = request_parameters(parameters_json)
    top_k = params.get("top_k", defaults.top_k)
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 0 <= top_k <= _MAX_TOP_K:
        raise ValueError(
            f"top_k must be an integer between 0 and {_MAX_TOP_K} (0 keeps every non-zero term), got {top_k!r}"
        )
    min_weight = params.get("min_weight", defaults.min_weight)
    if (
        isinstance(min_weight, bool)
        or not isinstance(min_weight, (int, float))
        or not math.isfinite(min_weight)
        or min_weight < 0
    ):
        raise ValueError(f"min_weight must be a finite number >= 0, got {min_weight!r}")
    return RequestOptions(top_k=top_k, min_weight=float(min_weight))


# input_type -> the side it selects ("passage": FlagEmbedding's and TEI's word for a document).
INPUT_TYPES = {"query": "query", "document": "document", "passage": "document"}
# What happens to a text longer than its side's max_length.
OVERFLOWS = ("truncate", "error", "chunk")
# Which end truncation keeps (TEI's truncation_direction): "right" drops the end.
DIRECTIONS = ("right", "left")


@dataclass(frozen=True)
class TextOptions:
    input_type: str = "document"  # "query" | "document"
    overflow: str = "truncate"
    truncation_direction: str = "right"


def parse_text_options(parameters_json: str | dict, defaults: TextOptions = TextOptions()) -> TextOptions:
    """Validate a request's ``input_type`` / ``overflow`` / ``truncation_direction``.

    Raises ValueError with a message meant for the caller.
    """
    params = request_parameters(parameters_json)
    input_type = params.get("input_type", defaults.input_type)
    if not isinstance(input_type, str) or input_type not in INPUT_TYPES:
        raise ValueError(f"input_type must be 'query' or 'document' (or its synonym 'passage'), got {input_type!r}")
    overflow = params.get("overflow", defaults.overflow)
    if not isinstance(overflow, str) or overflow not in OVERFLOWS:
        raise ValueError(f"overflow must be one of {', '.join(OVERFLOWS)}, got {overflow!r}")
    direction = params.get("truncation_direction", defaults.truncation_direction)
    if not isinstance(direction, str) or direction not in DIRECTIONS:
        raise ValueError(f"truncation_direction must be 'right' or 'left', got {direction!r}")
    return TextOptions(INPUT_TYPES[input_type], overflow, direction)
