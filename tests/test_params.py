import json

import pytest

from splade_triton.serving.params import Param, RequestOptions, parse_request_options, read_model_parameters

SPEC = {"n": Param(int, 3, lambda v: v >= 1, "an integer >= 1"), "flag": Param(bool, False)}
DEFAULTS = RequestOptions(top_k=0, min_weight=0.0)


def config(**params):
    return {"name": "m", "parameters": {k: {"string_value": v} for k, v in params.items()}}


def test_defaults_and_typed_values():
    assert read_model_parameters(config(), SPEC) == {"n": 3, "flag": False}
    assert read_model_parameters(config(n="7", flag="false"), SPEC) == {"n": 7, "flag": False}
    assert read_model_parameters(config(flag="True"), SPEC)["flag"] is True


@pytest.mark.parametrize("params,message", [
    ({"nn": "1"}, "unknown model parameter"),
    ({"n": "x"}, "n='x': not a valid int"),
    ({"n": "0"}, "must be an integer >= 1"),
    ({"flag": "maybe"}, "expected true or false"),
])
def test_bad_model_parameters_name_the_setting(params, message):
    with pytest.raises(ValueError, match=message):
        read_model_parameters(config(**params), SPEC)


def test_request_options():
    assert parse_request_options("", DEFAULTS) == DEFAULTS
    assert parse_request_options(json.dumps({"top_k": 5, "min_weight": 1}), DEFAULTS) == RequestOptions(5, 1.0)


@pytest.mark.parametrize("params,message", [
    ({"top_k": -1}, "top_k must be"),
    ({"top_k": 2**40}, "top_k must be"),
    ({"top_k": 2.5}, "top_k must be"),
    ({"top_k": True}, "top_k must be"),
    ({"top_k": "5"}, "top_k must be"),
    ({"min_weight": -1}, "min_weight must be"),
    ({"min_weight": "nan"}, "min_weight must be"),
    ({"min_weight": float("inf")}, "min_weight must be"),
    ({"topk": 1}, "unknown request parameter"),
])
def test_bad_request_options(params, message):
    with pytest.raises(ValueError, match=message):
        parse_request_options(json.dumps(params), DEFAULTS)
