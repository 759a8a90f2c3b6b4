"""SIGTERM, as Kubernetes sends it (to the launcher, the container's first process), loses no
request of a plain tritonclient (no retries), in model-control mode none (the cluster's) and
explicit: 16 clients keep requests in flight; those sent before the signal are answered, and so
are those sent on the same open connections through the grace period, while the launcher's
readiness reads 503; then the launcher exits 0.

Real launcher, real tritonserver, real signals; the only timing is the grace period itself.
"""

from __future__ import annotations

import signal
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests import triton
from tests.conftest import running

PASSAGE = " ".join(["the quick brown fox jumps over the lazy dog near the river bank"] * 10)  # ~130 tokens
GRACE_S = 12
CLIENTS = 16
# Clients, in turn. "grpc": Triton's own shutdown fails the ensemble requests in flight
# ("Server is stopping"). "mixed": kept-alive HTTP connections hold Triton's shutdown back
# (it waits for them), but new HTTP connections are reset at once.
CLIENT_MIXES = {"grpc": ("grpc",), "mixed": ("grpc", "http", "grpc", "http-new")}
EXIT_BOUND_S = 120  # grace + drain + stop on a loaded 2-core machine: "exited", not a timing claim


def readiness(server) -> int | str:
    """The launcher's readiness endpoint: an HTTP status, or the error's name (nothing listening)."""
    try:
        with urllib.request.urlopen(server.ready_url, timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError as e:
        return type(e).__name__


@pytest.mark.parametrize("clients", CLIENT_MIXES)
@pytest.mark.parametrize("mode", ["none", "explicit"])
def test_sigterm_loses_no_request_of_a_plain_client(repository, tmp_path, mode, clients, capsys):
    kinds = CLIENT_MIXES[clients]
    args = ("--model-control-mode", mode, "--grace-period", str(GRACE_S))
    with running(repository, tmp_path / "server.log", launcher_args=args) as server:
        assert readiness(server) == 200
        send_until = [float("inf")]  # set at the signal
        answered_once = [threading.Event() for _ in range(CLIENTS)]
        sent: list[tuple[str, float, object]] = []  # (kind of client, sent at, answer or exception)

        def keep_sending(i):
            # Requests of 1-4 passages back to back, so that the signal finds them at every step
            # of the ensemble. gRPC: one channel per client. HTTP: one kept-alive connection
            # (tritonclient.http's client is used by its own thread only), or a new connection
            # per request, as curl or a proxy's new connections make.
            kind = kinds[i % len(kinds)]
            protocol = kind.split("-")[0]
            c = triton.client(protocol, server)
            n = 0
            while time.monotonic() < send_until[0]:
                at = time.monotonic()
                try:
                    if kind == "http-new":
                        c.close()
                        c = triton.client(protocol, server)
                    answer = triton.encode(protocol, c, [f"{i} {n} {PASSAGE}"] * (1 + (i + n) % 4), outputs=("indices",))
                except Exception as e:  # noqa: BLE001 - any failure is a lost request
                    answer = e
                    time.sleep(0.1)  # (on the code before the fix: failures, not a busy loop)
                sent.append((kind, at, answer))
                answered_once[i].set()
                n += 1
            c.close()

        with ThreadPoolExecutor(CLIENTS) as pool:
            senders = [pool.submit(keep_sending, i) for i in range(CLIENTS)]
            try:
                # Every client has had an answer, so its connection is open and its next request is on it.
                for opened in answered_once:
                    assert opened.wait(EXIT_BOUND_S), f"no answer yet:\n{server.log()[-3000:]}"
                assert not any(s.done() for s in senders), [s.result() for s in senders if s.done()]
                server.send_signal(signal.SIGTERM)  # the launcher only, as the kubelet does
                at = time.monotonic()
                # Sent until 60 % of the grace period is over: each reaches the server within it.
                send_until[0] = at + 0.6 * GRACE_S
                time.sleep(0.5)  # the launcher's signal handler has run
                ready = []
                while server.process.poll() is None and time.monotonic() - at < EXIT_BOUND_S:
                    ready.append((time.monotonic() - at, readiness(server)))
                    time.sleep(0.25)
            finally:
                send_until[0] = min(send_until[0], time.monotonic())
            for s in senders:
                s.result(timeout=EXIT_BOUND_S)
        code = server.process.wait(5)
        log = server.log()

    lost = [(k, round(t - at, 1), str(e)[:150]) for k, t, e in sent if isinstance(e, Exception)]
    before = [e for _, t, e in sent if t < at]
    during = {k: [e for q, t, e in sent if q == k and t >= at] for k in kinds}
    assert not lost, (f"lost: {sum(isinstance(e, Exception) for e in before)} of {len(before)} requests sent before "
                      f"the signal, " + ", ".join(f"{sum(isinstance(e, Exception) for e in d)} of {len(d)} {k} requests"
                                                  for k, d in during.items()) +
                      f" sent after it; (client, sent s after the signal, error): {lost[:3]}\n{log[-3000:]}")
    assert all(during.values()), f"requests sent in the grace period: { {k: len(d) for k, d in during.items()} }"
    # Readiness 503 through the grace period (the probe's statuses until the launcher exited).
    in_grace = [status for t, status in ready if t < GRACE_S]
    assert in_grace and set(in_grace) == {503}, ready
    assert not [status for _, status in ready if status == 200], ready
    assert code == 0, log[-3000:]
    assert "splade-triton: drained in" in log, log[-3000:]
    with capsys.disabled():
        print(f"\nSIGTERM, mode {mode}, {clients} clients: {len(sent)} requests of {CLIENTS} plain clients, none lost: "
              f"{len(before)} sent before the signal, {sum(map(len, during.values()))} in the grace period; "
              f"readiness 503 for {len(in_grace)} probes; exit {code} {ready[-1][0] if ready else 0:.1f} s after the signal")
