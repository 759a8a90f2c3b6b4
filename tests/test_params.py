import json

import pytest

from splade_triton.serving.params import Param, RequestOptions, parse_request_options, read_model_parameters, resembles_ours

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
    ({"top-k": 1}, r"unknown request parameter\(s\): top-k \(did you mean top_k\?\)"),
    ({"TopK": 1}, "did you mean top_k"),
    ({"tok_k": 1}, "did you mean top_k"),
    ({"x-top-k": 1}, "did you mean top_k"),
    ({"min-weight": 1}, "did you mean min_weight"),
    ({"min_wieght": 1}, "did you mean min_weight"),
    ({"minweight": 1, "x-request-id": "a"}, "unknown request parameter\\(s\\): minweight \\(did"),
])
def test_bad_request_options(params, message):
    with pytest.raises(ValueError, match=message):
        parse_request_options(json.dumps(params), DEFAULTS)


def test_forwarded_headers_are_ignored():
    """Headers that tritonserver forwards as request parameters
    (--grpc-header-forward-pattern / --http-header-forward-pattern) do not fail requests."""
    headers = {"x-request-id": "7f3a", "traceparent": "00-abc-01", "nvcf-reqid": "r1", "authorization": "Bearer t",
               "user-agent": "curl/8", "x-forwarded-for": "10.0.0.1", "content-type": "application/json"}
    assert parse_request_options(json.dumps(headers), DEFAULTS) == DEFAULTS
    assert parse_request_options(json.dumps({**headers, "top_k": 3}), DEFAULTS) == RequestOptions(3, 0.0)


@pytest.mark.parametrize("name,ours", [
    ("top-k", "top_k"), ("TOP_K", "top_k"), ("topk", "top_k"), ("top.k", "top_k"), ("x-top-k", "top_k"),
    ("min-weight", "min_weight"), ("MinWeight", "min_weight"), ("min_weights", "min_weight"),
    ("x-request-id", None), ("traceparent", None), ("k", None), ("timeout", None), ("host", None),
])
def test_resembles_ours(name, ours):
    assert resembles_ours(name) == ours
