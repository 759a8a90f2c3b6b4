"""Readiness that means it: one tiny real inference through every ensemble.

Triton's /v2/health/ready stays 200 while a Python-backend stub is dead, so a
health check (compose, Kubernetes) runs this instead:

    python -m splade_triton.launcher check --url 127.0.0.1:8000
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request

TEXT = "readiness check"


def _get(url: str, timeout_s: float):
    with urllib.request.urlopen(url, timeout=timeout_s) as r:
        return json.loads(r.read())


def _request(config: dict) -> dict:
    batched = int(config.get("max_batch_size", 0) or 0) > 0
    inputs = []
    for spec in config.get("input", []):
        if spec.get("data_type") != "TYPE_STRING":
            raise ValueError(f"cannot make up input '{spec['name']}' of type {spec.get('data_type')}")
        dims = [int(d) if int(d) > 0 else 1 for d in spec.get("dims", [])]
        shape = ([1] if batched else []) + dims
        count = 1
        for d in shape:
            count *= d
        inputs.append({"name": spec["name"], "shape": shape, "datatype": "BYTES", "data": [TEXT] * count})
    return {"inputs": inputs}


def check(url: str, timeout_s: float = 10.0) -> list[str]:
    """Problems found at the HTTP endpoint ``url`` (host:port); empty when every ensemble answered."""
    base = url if url.startswith("http") else f"http://{url}"
    try:
        models = [m["name"] for m in _get(f"{base}/v2/models/stats", timeout_s)["model_stats"]]
    except (OSError, ValueError) as e:
        return [f"{base}: {e}"]
    problems = []
    ensembles = 0
    for model in sorted(set(models)):
        try:
            config = _get(f"{base}/v2/models/{model}/config", timeout_s)
            if config.get("platform") != "ensemble":
                continue
            ensembles += 1
            body = json.dumps(_request(config)).encode()
            request = urllib.request.Request(f"{base}/v2/models/{model}/infer", data=body,
                                             headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=timeout_s) as r:
                json.loads(r.read())
        except urllib.error.HTTPError as e:
            problems.append(f"model '{model}': HTTP {e.code} {e.read().decode(errors='replace')[:300]}")
        except (OSError, ValueError, KeyError) as e:
            problems.append(f"model '{model}': {e}")
    if not ensembles and not problems:
        problems.append(f"{base}: no ensemble is loaded")
    return problems
