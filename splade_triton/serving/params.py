"""Typed settings: config.pbtxt model parameters and per-request parameters.

Kept free of Triton imports so the parsing rules are unit-tested on their own.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Callable

__all__ = ["Param", "read_model_parameters", "RequestOptions", "parse_request_options"]

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


def parse_request_options(parameters_json: str, defaults: RequestOptions) -> RequestOptions:
    """Validate a request's ``top_k`` / ``min_weight`` (Triton request parameters).

    Raises ValueError with a message meant for the caller.
    """
    params = json.loads(parameters_json) if parameters_json else {}
    unknown = sorted(set(params) - {"top_k", "min_weight"})
    if unknown:
        raise ValueError(
            f"unknown request parameter(s): {', '.join(unknown)}; supported: top_k, min_weight"
        )
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
