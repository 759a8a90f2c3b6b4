"""The launcher: tritonserver as a child, its stubs supervised, stopped on SIGTERM / Ctrl-C without failing a request.

    python -m splade_triton.launcher --model-repository model_repository [-- tritonserver args]
    python -m splade_triton.launcher check --url 127.0.0.1:8000
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from splade_triton.launcher.admin import ADMIN_KEY_ENV, KEY_CHARS, Admin, new_key
from splade_triton.launcher.drain import drain
from splade_triton.launcher.health import Health, triton_ready
from splade_triton.launcher.stubs import mapped_regions, remove_regions, stub_processes
from splade_triton.launcher.supervisor import Supervisor, log
from splade_triton.launcher.tritonserver import ServerOptions, command, environment



def _die_with_parent() -> None:
    # Own process group: a terminal's Ctrl-C reaches only the launcher, which
    # drains first. PR_SET_PDEATHSIG: tritonserver stops if the launcher is killed.
    os.setpgid(0, 0)
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)


def _kill_server(process: subprocess.Popen) -> None:
    """SIGKILL tritonserver and its Python-backend stubs (they would linger without their parent)."""
    stubs = stub_processes(process.pid)
    process.kill()
    process.wait()
    for stub in stubs:
        try:
            os.kill(stub.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _wait(seconds: float, done) -> None:
    """Sleep up to ``seconds``, less once ``done()``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not done():
        time.sleep(0.1)


def serve(options: ServerOptions, drain_timeout_s: float = 30.0, grace_s: float = 0.0,
          health_port: int | None = None) -> int:
    """Run tritonserver under the launcher until it exits or a signal stops it.

    A first SIGTERM / SIGINT stops it without failing a request, in either
    model-control mode: the readiness endpoint on ``health_port`` (if any)
    reads 503 at once, while tritonserver goes on serving every request for
    ``grace_s`` (load balancers stop sending meanwhile); then the drain (at most
    ``drain_timeout_s``): in explicit mode new requests are refused with a
    retryable UNAVAILABLE, in mode none (no reloads) they are still served; the
    requests in flight finish; then tritonserver is ended. A second signal
    skips the rest.

    Returns the exit status: 0 after a clean stop; non-zero when, in
    model-control mode none, a Python-backend stub died (the model cannot be
    reloaded there, so tritonserver is stopped for a restart). Must run in the
    main thread (it handles SIGINT and SIGTERM).
    """
    health = None
    if health_port:
        try:
            health = Health(options.host, health_port, lambda: triton_ready(options.host, options.http_port))
        except OSError as e:
            raise SystemExit(f"--health-port {health_port}: {e.strerror or e}") from None
        health.start()
    try:
        return _serve(options, drain_timeout_s, grace_s, health.stopping if health else threading.Event())
    finally:
        if health is not None:
            health.close()


def _serve(options: ServerOptions, drain_timeout_s: float, grace_s: float, stopping: threading.Event) -> int:
    # stdin: a process group other than the terminal's must not read from it.
    process = subprocess.Popen(command(options), env=environment(), stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
    admin = Admin(options.host, options.http_port, options.admin_key)
    signals: list[int] = []
    stop = threading.Event()
    terminated = []
    dead_stub: list[str] = []

    def on_dead_stub(message: str) -> None:
        # Mode none cannot reload the model: its requests would fail INTERNAL while
        # the server still reads ready. Stop, and exit non-zero so that whatever
        # runs the launcher (a Deployment's restart policy) starts it afresh.
        dead_stub.append(message)
        log(f"{message}; model-control mode none cannot reload it: stopping tritonserver")
        stopping.set()
        stop.set()

    # Explicit mode reloads a model whose stub died; mode none can only report it.
    supervisor = Supervisor(process.pid, admin,
                            on_dead=on_dead_stub if options.model_control_mode == "none" else None)
    supervisor.start()

    def terminate():
        if not terminated and process.poll() is None:
            terminated.append(True)
            process.send_signal(signal.SIGTERM)

    def on_signal(signum, frame):
        signals.append(signum)
        stopping.set()  # readiness reads 503 from now on
        stop.set()
        if len(signals) > 1:
            terminate()  # a second signal: stop without draining

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, on_signal)

    while not stop.wait(0.2):
        if process.poll() is not None:
            break
    stopping.set()
    graceful = process.poll() is None and len(signals) == 1 and not dead_stub
    if graceful and grace_s > 0:
        # tritonserver untouched: requests that still arrive are served while
        # load balancers and the readiness probe take this server out.
        log(f"stopping: readiness 503; serving every request for {grace_s:g} s more (grace period)")
        _wait(grace_s, lambda: len(signals) > 1 or process.poll() is not None)
        graceful = process.poll() is None and len(signals) == 1
    start = time.monotonic()
    if not supervisor.stop(drain_timeout_s):
        log("supervisor still reloading a model; draining anyway")

    drained = False
    if graceful:
        remaining = max(0.0, drain_timeout_s - (time.monotonic() - start))
        try:
            # Mode none cannot reload a model to refuse requests: they are served until the end.
            drained = drain(admin, remaining, process.pid, interrupted=lambda: len(signals) > 1,
                            refuse_new=options.model_control_mode == "explicit")
        except (OSError, ValueError) as e:
            log(f"drain failed: {e}")
        log(f"drained in {time.monotonic() - start:.1f} s" if drained else "drain incomplete; stopping anyway")
    regions = mapped_regions(process.pid) | supervisor.shm_regions
    if drained:
        # Nothing is in flight. Triton's own exit would now unload the models
        # while still accepting requests, which then fail NOT_FOUND (final for
        # clients); stopping at once makes them fail to connect (retried).
        _kill_server(process)
        return_code = 0
    else:
        terminate()
        try:
            return_code = process.wait(options.exit_timeout_s + 10)
        except subprocess.TimeoutExpired:
            _kill_server(process)
            return_code = 1
    if return_code < 0:
        return_code = 128 - return_code  # killed by a signal, as a shell reports it
    # Left behind by a dead stub's model, or by a tritonserver that was killed.
    remove_regions(regions)
    if dead_stub:
        return_code = return_code or 1
        log(f"exiting {return_code}: {dead_stub[0]} (model-control mode none cannot reload it; restart the server)")
    return return_code


def check_main(argv: list[str]) -> None:
    from splade_triton.launcher.check import check

    parser = argparse.ArgumentParser(prog="python -m splade_triton.launcher check",
                                     description="Exit 0 when every ensemble answers a real inference.")
    parser.add_argument("--url", default="127.0.0.1:8000", help="the server's HTTP endpoint (default 127.0.0.1:8000)")
    parser.add_argument("--timeout", type=float, default=10.0)
    a = parser.parse_args(argv)
    problems = check(a.url, a.timeout)
    for problem in problems:
        print(f"not ready: {problem}", file=sys.stderr)
    sys.exit(1 if problems else 0)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["check"]:
        check_main(argv[1:])
    parser = argparse.ArgumentParser(description="Serve a model repository with tritonserver.")
    parser.add_argument("--model-repository", default="model_repository")
    parser.add_argument("--host", default="127.0.0.1", help="address for HTTP, gRPC and metrics (default 127.0.0.1)")
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--metrics-port", type=int, default=8002)
    parser.add_argument("--log-verbose", type=int, default=0)
    parser.add_argument("--model-control-mode", choices=("explicit", "none"), default="explicit",
                        help="explicit (default): stub recovery and draining, admin API behind the key; "
                             "none: no model loading or unloading at all")
    parser.add_argument("--health-port", type=int, default=8003,
                        help="the launcher's readiness endpoint, GET /v2/health/ready: 200 while tritonserver is "
                             "ready and no stop was asked for, else 503 (default 8003; 0: none)")
    parser.add_argument("--grace-period", type=float, default=0.0,
                        help="seconds after SIGTERM / Ctrl-C during which readiness reads 503 and every request "
                             "is still served, for load balancers to stop sending (default 0)")
    parser.add_argument("--drain-timeout", type=float, default=30.0,
                        help="seconds in-flight requests get to finish after the grace period (default 30)")
    parser.add_argument("--exit-timeout", type=int, default=30,
                        help="tritonserver's own --exit-timeout-secs, after the drain (default 30)")
    parser.add_argument("extra", nargs="*", help="further tritonserver arguments, after --")
    a = parser.parse_args(argv)
    if not 0 <= a.health_port <= 65535:
        raise SystemExit(f"--health-port must be a port number (0 for none), got {a.health_port}")
    if a.grace_period < 0:
        raise SystemExit(f"--grace-period must be 0 or more seconds, got {a.grace_period:g}")
    key = os.environ.get(ADMIN_KEY_ENV) or new_key()
    if not KEY_CHARS.match(key):
        raise SystemExit(f"{ADMIN_KEY_ENV} may contain only letters, digits and . _ ~ -")
    options = ServerOptions(
        model_repository=str(Path(a.model_repository).resolve()) if "://" not in a.model_repository else a.model_repository,
        host=a.host,
        http_port=a.http_port,
        grpc_port=a.grpc_port,
        metrics_port=a.metrics_port,
        log_verbose=a.log_verbose,
        exit_timeout_s=a.exit_timeout,
        model_control_mode=a.model_control_mode,
        admin_key=key,
        extra_args=tuple(a.extra),
    )
    admin = "admin API: key from " + ADMIN_KEY_ENV if os.environ.get(ADMIN_KEY_ENV) else "admin API: launcher only"
    health = f", readiness {a.health_port}" if a.health_port else ""
    print(f"serving {options.model_repository} on {a.host}: HTTP {a.http_port}, gRPC {a.grpc_port}, "
          f"metrics {a.metrics_port}{health}; model control {a.model_control_mode}, {admin} (Ctrl-C stops)", flush=True)
    sys.exit(serve(options, drain_timeout_s=a.drain_timeout, grace_s=a.grace_period, health_port=a.health_port))
