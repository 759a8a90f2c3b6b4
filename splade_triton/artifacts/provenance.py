"""Provenance of a TensorRT plan, and the check that refuses a plan this server cannot run.

``export.build_engine`` writes ``<plan>.json`` beside each plan: what it was
built with (TensorRT release, GPU) and from (ONNX file, profile, precision).
``plan_problems`` compares it with what this server runs and with what the
current settings expect.
"""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["PROVENANCE_FORMAT", "expected_provenance", "plan_problems", "provenance_path", "read_provenance"]

PROVENANCE_FORMAT = 1


def provenance_path(plan: Path) -> Path:
    """Where a plan's provenance lives: beside it, ``<plan>.json``."""
    return Path(str(plan) + ".json")


def read_provenance(plan: Path) -> dict:
    """The provenance written beside ``plan``; ValueError if absent or unreadable."""
    path = provenance_path(plan)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{path} is missing: a plan without provenance cannot be checked; rebuild it") from None
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read {path}: {e}") from None
    if not isinstance(data, dict) or data.get("format") != PROVENANCE_FORMAT:
        raise ValueError(f"{path} is not a provenance file of format {PROVENANCE_FORMAT}")
    return data


def expected_provenance(onnx_sha256: str, profile: dict, precision: str, fp32_groups) -> dict:
    """What a plan must have been built from to serve the current settings."""
    return {
        "onnx_sha256": onnx_sha256,
        "profile": profile,
        "precision": precision,
        "fp32_groups": sorted(fp32_groups) if precision == "fp16" else [],
    }


def _release(version: str) -> tuple[int, ...]:
    # Plans are tied to a TensorRT release (major.minor.patch); the fourth
    # component is a build number.
    return tuple(int(p) for p in str(version).split(".")[:3] if p.isdigit())


def plan_problems(provenance: dict, runtime: dict, expected: dict | None = None) -> list[str]:
    """Why a plan cannot (or should not) serve here; empty when it can.

    ``runtime``: {"tensorrt_version": "10.8.0", "gpu": {"name", "compute_capability"}},
    what this server runs. ``expected``: from ``expected_provenance``; a
    difference there means the plan was built from another graph or settings.
    A plan runs only on the TensorRT release and the GPU compute capability
    it was built for: anything else fails to deserialize, so it is refused
    here first, with the reason.
    """
    problems = []
    built_trt, run_trt = provenance.get("tensorrt_version"), runtime.get("tensorrt_version")
    if not built_trt:
        problems.append("its provenance does not say which TensorRT built it")
    elif run_trt and _release(built_trt) != _release(run_trt):
        problems.append(
            f"it was built with TensorRT {built_trt} but this server runs TensorRT {run_trt} "
            f"(a plan runs only on the TensorRT release that built it)"
        )
    built_gpu, run_gpu = provenance.get("gpu") or {}, runtime.get("gpu") or {}
    built_cc, run_cc = built_gpu.get("compute_capability"), run_gpu.get("compute_capability")
    if not built_cc:
        problems.append("its provenance does not say which GPU it was built for")
    elif run_cc and built_cc != run_cc:
        problems.append(
            f"it was built for compute capability {built_cc} ({built_gpu.get('name', 'unknown GPU')}) "
            f"but this GPU, {run_gpu.get('name', 'unknown')}, is {run_cc} "
            f"(a plan runs only on the GPU family it was built for)"
        )
    for key, what in (("onnx_sha256", "ONNX graph"), ("profile", "optimization profile"),
                      ("precision", "precision"), ("fp32_groups", "set of FP32 layers")):
        if expected is not None and key in expected and provenance.get(key) != expected[key]:
            problems.append(f"it was built for another {what} ({provenance.get(key)!r}, now {expected[key]!r})")
    return problems
