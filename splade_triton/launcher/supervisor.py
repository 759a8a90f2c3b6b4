"""Reload a model whose Python-backend stub process died (this Triton build never restarts one);
where models cannot be reloaded (model-control mode none), report it so the server is restarted."""

from __future__ import annotations

import sys
import threading
import time
from collections import Counter
from typing import Callable

from splade_triton.launcher.admin import Admin
from splade_triton.launcher.stubs import StubProcess, stub_processes


def log(message: str) -> None:
    print(f"splade-triton: {message}", file=sys.stderr, flush=True)


def dead_models(expected: dict[str, int], current: list[StubProcess], seen: set[str]) -> list[str]:
    """Models that run fewer stubs than ``expected`` among those in ``seen``.

    Only a model whose stubs were seen alive counts: if the stubs
    cannot be recognised (a changed command line), nothing looks dead, and no
    model is reloaded over and over.
    """
    live = Counter(s.model for s in current if s.instance != s.model)
    return sorted(m for m, n in expected.items() if m in seen and live[m] < n)


class Supervisor(threading.Thread):
    """Watches tritonserver's stubs; unloads and loads a READY model that lost one.

    When a model whose stubs were seen alive runs fewer than its config's
    instances, it is unloaded and loaded with the admin key (Triton reloads the
    ensembles built on it); any other model READY before is loaded again. It
    assumes nobody else reloads models meanwhile.

    With ``on_dead`` (model-control mode none, where Triton refuses to reload),
    nothing is reloaded: ``on_dead(message)`` is called once, naming the model,
    and the supervisor stops watching.
    """

    def __init__(self, server_pid: int, admin: Admin, interval_s: float = 0.5,
                 processes=stub_processes, on_dead: Callable[[str], None] | None = None):
        super().__init__(name="stub-supervisor", daemon=True)
        self.server_pid = server_pid
        self.admin = admin
        self.interval_s = interval_s
        self.processes = processes
        # Every stub region seen, to remove after tritonserver exits: a dead
        # stub's model is never unloaded by this Triton build, nor its region.
        self.shm_regions: set[str] = set()
        self.seen: set[str] = set()
        self.on_dead = on_dead
        self._stop = threading.Event()
        self._busy = threading.Lock()

    def stop(self, timeout_s: float | None = None) -> bool:
        """Stop watching; wait up to ``timeout_s`` for a reload in progress. True if none is left."""
        self._stop.set()
        if not self._busy.acquire(timeout=-1 if timeout_s is None else timeout_s):
            return False
        self._busy.release()
        return True

    def check(self, expected: dict[str, int] | None, last_pids: frozenset[int]):
        """One look: returns the new (expected, last_pids)."""
        current = [s for s in self.processes(self.server_pid) if s.instance != s.model]
        self.shm_regions.update(s.shm_region for s in current)
        pids = frozenset(s.pid for s in current)
        live = Counter(s.model for s in current)
        # Instance stubs start while their model loads: seen even before the API answers.
        self.seen.update(live)
        dead = dead_models(expected or {}, current, self.seen)
        if expected is not None and not dead and pids == last_pids:
            return expected, last_pids
        try:
            states = self.admin.states()
            ready = sorted(m for m, state in states.items() if state == "READY")
            expected = {m: self.admin.stub_count(m) for m in ready}
        except (OSError, ValueError):
            return expected, last_pids  # not up yet, or stopping; look again next time
        dead = dead_models(expected, current, self.seen)
        if dead and self.on_dead is not None:
            self._stop.set()
            self.on_dead("; ".join(f"{expected[m] - live[m]} of {expected[m]} Python-backend stub(s) of model '{m}' died"
                                   for m in dead))
        elif dead:
            try:
                self._recover(dead, live, expected, states)
            except (OSError, ValueError) as e:
                log(f"supervisor: reloading failed: {e}")
        return expected, pids

    def run(self) -> None:
        expected: dict[str, int] | None = None
        last_pids: frozenset[int] = frozenset()
        while not self._stop.wait(self.interval_s):
            with self._busy:
                if self._stop.is_set():
                    return
                expected, last_pids = self.check(expected, last_pids)

    def _recover(self, dead: list[str], live: Counter, expected: dict[str, int], before: dict[str, str]) -> None:
        for model in dead:
            if self._stop.is_set():
                return
            log(f"supervisor: {expected[model] - live[model]} of {expected[model]} stub(s) of model '{model}' died; "
                f"reloading model '{model}'")
            start = time.monotonic()
            self.seen.discard(model)  # judged again once its new stubs are seen
            self.admin.unload(model)
            self.admin.load(model)
            log(f"supervisor: model '{model}' reloaded in {time.monotonic() - start:.1f} s")
        after = self.admin.states()
        for model, state in before.items():
            if state == "READY" and after.get(model) != "READY":
                self.admin.load(model)
        # The new stubs exist now; one may die before the next look.
        self.seen.update(s.model for s in self.processes(self.server_pid) if s.instance != s.model)
