"""Drain a tritonserver before it stops: refuse new requests as retryable, finish those in flight.

(The launcher first serves everything for its grace period, readiness 503; see serve.py.
In model-control mode none nothing can be reloaded, so step 1 is skipped there:
requests still sent are served, and the settle waits for them too.)

Triton's own shutdown (SIGTERM) fails an ensemble request in flight at its
next step ("Server is stopping"), and unloading the ensembles first makes new
requests fail NOT_FOUND ("has no available versions"), which a client must not
retry. So the drain:

1. refuses: reloads each ensemble's entry step (the tokenizer) with a queue
   policy that rejects every request at once (``timeout_action: REJECT``,
   1 us timeout). A new request then fails with UNAVAILABLE "Request timeout
   expired" (gRPC UNAVAILABLE, HTTP 503), which clients retry elsewhere or
   later, while Triton's reload lets the old instance finish its own queue;
2. settles: waits until nothing runs: the other models' request counters stop
   moving and their Python-backend stubs stop using CPU;
3. the caller then ends tritonserver at once (SIGKILL, stubs too): nothing is
   in flight, and Triton's own exit would unload the models while still
   accepting requests, answering them NOT_FOUND. Connections are refused
   instead (retried).
"""

from __future__ import annotations

import time

from splade_triton.launcher.admin import Admin
from splade_triton.launcher.stubs import cpu_seconds, stub_processes
from splade_triton.launcher.supervisor import log

REJECT_POLICY = {"timeout_action": "REJECT", "default_timeout_microseconds": 1, "allow_timeout_override": False}
SETTLE_WINDOW_S = 0.5
SETTLE_WINDOWS = 2  # quiet windows in a row
IDLE_CPU_S = 0.05  # stub CPU per window below which nothing is computing


def entry_steps(config: dict) -> list[str]:
    """The models of an ensemble config that take the ensemble's own inputs."""
    inputs = {i["name"] for i in config.get("input", [])}
    steps = config.get("ensemble_scheduling", {}).get("step", [])
    return [s["model_name"] for s in steps if inputs & set(s.get("input_map", {}).values())]


def refusing(config: dict) -> dict | None:
    """``config`` with a queue that rejects every request; None if the model has no batcher to set."""
    if not int(config.get("max_batch_size", 0) or 0):
        return None
    refused = dict(config)
    batching = dict(refused.get("dynamic_batching") or {})
    batching["default_queue_policy"] = {**(batching.get("default_queue_policy") or {}), **REJECT_POLICY}
    refused["dynamic_batching"] = batching
    return refused


def refuse(admin: Admin) -> list[str]:
    """Make every READY ensemble's entry steps reject new requests; returns those models."""
    ready = [m for m, state in admin.states().items() if state == "READY"]
    entries: list[str] = []
    for model in ready:
        config = admin.config(model)
        if config.get("platform") == "ensemble":
            entries += [m for m in entry_steps(config) if m not in entries]
    refused = []
    for model in entries:
        config = refusing(admin.config(model))
        if config is None:
            log(f"drain: model '{model}' has no dynamic batcher; it keeps accepting requests")
            continue
        admin.load(model, config)
        refused.append(model)
    return refused


def _activity(admin: Admin, skip: set[str]) -> dict[str, tuple[int, int, int]]:
    out = {}
    for name, s in admin.stats().items():
        if name in skip:
            continue
        inference = s.get("inference_stats", {})
        out[name] = (int(inference.get("success", {}).get("count", 0)), int(inference.get("fail", {}).get("count", 0)),
                     int(s.get("execution_count", 0)))
    return out


def settle(admin: Admin, server_pid: int, skip: set[str], deadline: float, interrupted=lambda: False) -> bool:
    """Wait until no model outside ``skip`` works; False if ``deadline`` came first."""
    def stub_cpu() -> float:
        return sum(cpu_seconds(s.pid) for s in stub_processes(server_pid))

    quiet = 0
    activity, cpu = _activity(admin, skip), stub_cpu()
    while time.monotonic() < deadline and not interrupted():
        time.sleep(SETTLE_WINDOW_S)
        now_activity, now_cpu = _activity(admin, skip), stub_cpu()
        idle = now_activity == activity and now_cpu - cpu < IDLE_CPU_S
        quiet = quiet + 1 if idle else 0
        if quiet >= SETTLE_WINDOWS:
            return True
        activity, cpu = now_activity, now_cpu
    return False


def drain(admin: Admin, timeout_s: float, server_pid: int, interrupted=lambda: False, refuse_new: bool = True) -> bool:
    """Refuse new requests (retryably; not without ``refuse_new``: model-control mode none
    cannot reload a model), then wait for those in flight; True if all done within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    refused = refuse(admin) if refuse_new else []
    ensembles = {m for m, state in admin.states().items() if state == "READY" and admin.is_ensemble(m)}
    return settle(admin, server_pid, set(refused) | ensembles, deadline, interrupted)
