"""Launch a real tritonserver on a model repository (CPU, from nvidia-pytriton).

The ``nvidia-pytriton`` wheel carries the tritonserver binary, the Python
backend, and one Python-backend stub per Python version. This module puts the
stub for the running interpreter in place and builds the command line and
environment the stub needs (it runs Python isolated, so the virtual
environment must be first on PATH, and libpython must be findable).

Run as a program it is the service's launcher: tritonserver runs as its child,
beside a supervisor thread that reloads a model whose Python-backend stub
process died (this Triton build never restarts one), and SIGTERM / Ctrl-C
drain in-flight requests before tritonserver stops.

    python -m splade_triton.launcher.server --model-repository model_repository
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import sysconfig
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "ADMIN_HEADER",
    "ADMIN_KEY_ENV",
    "GRPC_ADMIN_HEADER",
    "RESTRICTED_APIS",
    "Admin",
    "ServerOptions",
    "StubProcess",
    "Supervisor",
    "command",
    "environment",
    "launched_tritonserver",
    "prepare",
    "serve",
    "stub_processes",
]

# The admin key guards Triton's model-repository, shared-memory, trace and
# logging APIs on HTTP and gRPC; inference, health, metadata, model config and
# statistics stay open.
ADMIN_KEY_ENV = "SPLADE_ADMIN_KEY"
ADMIN_HEADER = "splade-admin-key"
# Triton prefixes the header it checks on gRPC.
GRPC_ADMIN_HEADER = f"triton-grpc-protocol-{ADMIN_HEADER}"
RESTRICTED_APIS = ("model-repository", "shared-memory", "trace", "logging")
_KEY_CHARS = re.compile(r"^[A-Za-z0-9._~-]+$")  # no ':', ',' or '=' (flag syntax)


def _log(message: str) -> None:
    print(f"splade-triton: {message}", file=sys.stderr, flush=True)


def _pytriton_root() -> Path:
    try:
        import pytriton
    except ImportError:
        raise SystemExit("nvidia-pytriton is not installed in this environment (run script/setup)") from None
    return Path(pytriton.__file__).resolve().parent / "tritonserver"


def _new_key() -> str:
    return secrets.token_urlsafe(32)


@dataclass
class ServerOptions:
    """How to run tritonserver.

    ``model_control_mode``: ``explicit`` (default) loads every model at start
    and lets holders of the admin key load / unload, which the launcher needs
    to recover from a dead stub and to drain on SIGTERM; ``none`` is Triton's
    fixed mode, where nobody can (a dead stub then needs a process restart).
    ``admin_key``: a random one unless given; never printed.
    """

    model_repository: str
    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    log_verbose: int = 0
    exit_timeout_s: int = 30
    model_control_mode: str = "explicit"
    admin_key: str = field(default_factory=_new_key, repr=False)
    extra_args: tuple[str, ...] = ()


def prepare() -> Path:
    """Put the Python-backend stub for this interpreter in place; return the backends dir."""
    root = _pytriton_root()
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise SystemExit(f"nvidia-pytriton has no Python-backend stub for Python {version}")
    target = root / "backends" / "python" / "triton_python_backend_stub"
    if not target.is_file() or target.stat().st_size != stub.stat().st_size:
        shutil.copy2(stub, target)
    return root / "backends"


def _has_gpu() -> bool:
    return Path("/dev/nvidia0").exists()


def command(options: ServerOptions) -> list[str]:
    """The tritonserver command line for ``options``."""
    if options.model_control_mode not in ("explicit", "none"):
        raise ValueError(f"model_control_mode must be 'explicit' or 'none', got {options.model_control_mode!r}")
    if not _KEY_CHARS.match(options.admin_key):
        raise ValueError("the admin key may contain only letters, digits and . _ ~ -")
    backends = prepare()
    binary = _pytriton_root() / "bin" / "tritonserver"
    host = options.host
    restricted = f"{','.join(RESTRICTED_APIS)}:{ADMIN_HEADER}={options.admin_key}"
    args = [
        str(binary),
        f"--model-repository={options.model_repository}",
        f"--backend-directory={backends}",
        f"--http-address={host}",
        f"--grpc-address={host}",
        f"--metrics-address={host}",
        f"--http-port={options.http_port}",
        f"--grpc-port={options.grpc_port}",
        f"--metrics-port={options.metrics_port}",
        f"--log-verbose={options.log_verbose}",
        f"--exit-timeout-secs={options.exit_timeout_s}",
        f"--model-control-mode={options.model_control_mode}",
        # A model that fails to load leaves the server up and not ready, its
        # error in the log and the repository index, instead of exiting.
        "--exit-on-error=false",
        "--strict-readiness=true",
        f"--http-restricted-api={restricted}",
        f"--grpc-restricted-protocol={restricted}",
        # Python models exchange tensors through /dev/shm; grow it in big steps.
        "--backend-config=python,shm-default-byte-size=16777216",
        "--backend-config=python,shm-growth-byte-size=16777216",
    ]
    if options.model_control_mode == "explicit":
        args.append("--load-model=*")
    if not _has_gpu():
        args += ["--pinned-memory-pool-byte-size=0", "--cuda-memory-pool-byte-size=0:0", "--allow-gpu-metrics=false"]
    return args + list(options.extra_args)


def environment(base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for tritonserver and its Python-backend stubs."""
    env = dict(os.environ if base is None else base)
    # The model code has no use for the admin key.
    env.pop(ADMIN_KEY_ENV, None)
    # The stub takes sys.prefix from the first python3 on PATH: this venv's.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    libdirs = [sysconfig.get_config_var("LIBDIR") or ""]
    env["LD_LIBRARY_PATH"] = os.pathsep.join(d for d in [*libdirs, env.get("LD_LIBRARY_PATH", "")] if d)
    # The tokenizer model parallelises itself per call; no fork warnings.
    env.setdefault("TOKENIZERS_PARALLELISM", "true")
    return env


# --- Python-backend stub processes -------------------------------------------------


@dataclass(frozen=True)
class StubProcess:
    """One Python-backend stub: a child process of tritonserver per model instance."""

    pid: int
    model: str
    instance: str
    shm_region: str  # its /dev/shm file


def _children(pid: int) -> list[int]:
    found = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                found += [int(c) for c in f.read().split()]
        except OSError:
            continue
    return found


def launched_tritonserver(launcher_pid: int) -> int | None:
    """The pid of the tritonserver that a launcher process runs, if any."""
    for child in _children(launcher_pid):
        try:
            if os.readlink(f"/proc/{child}/exe").endswith("/tritonserver"):
                return child
        except OSError:
            continue
    return None


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True


def stub_processes(server_pid: int) -> list[StubProcess]:
    """The live Python-backend stubs of the tritonserver process ``server_pid``."""
    stubs = []
    for child in _children(server_pid):
        try:
            with open(f"/proc/{child}/cmdline", "rb") as f:
                argv = [a.decode(errors="replace") for a in f.read().split(b"\0")]
        except OSError:
            continue
        # argv: stub, <repo>/<model>/<version>/model.py, shm region, sizes...,
        # parent pid, backend dir, ipc handle, instance name, ...
        if len(argv) < 9 or not argv[0].endswith("triton_python_backend_stub") or _is_zombie(child):
            continue
        stubs.append(StubProcess(child, Path(argv[1]).parent.parent.name, argv[8], argv[2]))
    return stubs


# --- admin client ------------------------------------------------------------------


def _client_host(host: str) -> str:
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


class Admin:
    """Triton's model-repository API over HTTP, sent with the admin key."""

    def __init__(self, host: str, port: int, key: str, timeout_s: float = 120.0):
        self.base = f"http://{_client_host(host)}:{port}"
        self.key = key
        self.timeout_s = timeout_s

    def _call(self, path: str, body: bytes | None = None) -> bytes:
        request = urllib.request.Request(
            self.base + path, data=body, method="GET" if body is None else "POST", headers={ADMIN_HEADER: self.key}
        )
        with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
            return response.read()

    def states(self) -> dict[str, str]:
        """Model name -> READY / LOADING / UNLOADING / UNAVAILABLE ('' if never loaded)."""
        return {m["name"]: m.get("state", "") for m in json.loads(self._call("/v2/repository/index", b"{}"))}

    def load(self, model: str) -> None:
        self._call(f"/v2/repository/models/{model}/load", b"{}")

    def unload(self, model: str) -> None:
        self._call(f"/v2/repository/models/{model}/unload", b"{}")

    def is_ensemble(self, model: str) -> bool:
        return json.loads(self._call(f"/v2/models/{model}/config")).get("platform") == "ensemble"

    def stub_count(self, model: str) -> int:
        """Python-backend stub processes the loaded ``model`` runs: one per instance."""
        config = json.loads(self._call(f"/v2/models/{model}/config"))
        if config.get("backend") != "python":
            return 0
        return sum(
            int(g.get("count", 1)) * max(1, len(g.get("gpus", [])) if g.get("kind") == "KIND_GPU" else 1)
            for g in config.get("instance_group", [])
        )


# --- supervisor ----------------------------------------------------------------


class Supervisor(threading.Thread):
    """Reloads a model whose Python-backend stub process died.

    This Triton build never restarts a dead stub: every later request to its
    model fails while /v2/health/ready still says ready. The supervisor
    watches tritonserver's stub processes; when a READY model runs fewer
    stubs than its config's instances, it unloads and loads it with the admin key
    (Triton reloads the ensembles built on it), then loads any other model
    that was READY before. It assumes nobody else reloads models meanwhile.
    """

    def __init__(self, server_pid: int, admin: Admin, interval_s: float = 0.5):
        super().__init__(name="stub-supervisor", daemon=True)
        self.server_pid = server_pid
        self.admin = admin
        self.interval_s = interval_s
        # Every stub region seen, to remove after tritonserver exits: a dead
        # stub's model is never unloaded by this Triton build, nor its region.
        self.shm_regions: set[str] = set()
        self._stop = threading.Event()
        self._busy = threading.Lock()

    def stop(self) -> None:
        """Stop watching; waits for a reload in progress."""
        self._stop.set()
        with self._busy:
            pass

    def run(self) -> None:
        # Stubs each READY Python model should run, from its config: a model
        # with fewer live stubs lost one, even one that died before this thread
        # ever saw it. (While a model loads, a short-lived stub named after the
        # model, not an instance, checks its config and exits: not counted.)
        expected: dict[str, int] | None = None
        last_pids: frozenset[int] = frozenset()
        while not self._stop.wait(self.interval_s):
            with self._busy:
                if self._stop.is_set():
                    return
                current = [s for s in stub_processes(self.server_pid) if s.instance != s.model]
                self.shm_regions.update(s.shm_region for s in current)
                pids = frozenset(s.pid for s in current)
                live = Counter(s.model for s in current)
                short = {m for m, n in (expected or {}).items() if live[m] < n}
                if expected is not None and not short and pids == last_pids:
                    continue
                try:
                    states = self.admin.states()
                    ready = sorted(m for m, state in states.items() if state == "READY")
                    expected = {m: self.admin.stub_count(m) for m in ready}
                except (OSError, ValueError):
                    continue  # not up yet, or stopping; look again next time
                last_pids = pids
                dead = sorted(m for m in short if m in expected)
                if dead:
                    try:
                        self._recover(dead, live, expected, states)
                    except (OSError, ValueError) as e:
                        _log(f"supervisor: reloading failed: {e}")

    def _recover(self, dead: list[str], live: Counter, expected: dict[str, int], before: dict[str, str]) -> None:
        for model in dead:
            _log(f"supervisor: {expected[model] - live[model]} of {expected[model]} stub(s) of model '{model}' died; "
                 f"reloading model '{model}'")
            start = time.monotonic()
            self.admin.unload(model)
            self.admin.load(model)
            _log(f"supervisor: model '{model}' reloaded in {time.monotonic() - start:.1f} s")
        after = self.admin.states()
        for model, state in before.items():
            if state == "READY" and after.get(model) != "READY":
                self.admin.load(model)


# --- the launcher --------------------------------------------------------------


def _die_with_parent() -> None:
    # Own process group: a terminal's Ctrl-C reaches only the launcher, which
    # drains first. PR_SET_PDEATHSIG: tritonserver stops if the launcher is killed.
    os.setpgid(0, 0)
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)


def _wait_unloaded(admin: Admin, models: list[str], deadline: float, interrupted) -> bool:
    while time.monotonic() < deadline and not interrupted():
        states = admin.states()
        if all(states.get(m) not in ("READY", "LOADING", "UNLOADING") for m in models):
            return True
        time.sleep(0.1)
    return False


def drain(admin: Admin, timeout_s: float, interrupted=lambda: False, server_pid: int | None = None) -> bool:
    """Unload every model, ensembles first; True when all went within ``timeout_s``.

    Triton's own shutdown stops every model at once, so an ensemble request
    in flight fails at its next step ("Server is stopping"). Unloading the
    ensembles first refuses new requests to them while the ones in flight
    finish on the composing models, which are unloaded after. A model whose
    stub is dead never finishes unloading (this Triton build): with
    ``server_pid`` given, such models are not waited for.
    """
    deadline = time.monotonic() + timeout_s
    loaded = [m for m, state in admin.states().items() if state == "READY"]
    ensembles = [m for m in loaded if admin.is_ensemble(m)]
    others = [m for m in loaded if m not in ensembles]
    broken = set()
    if server_pid is not None:
        live = Counter(s.model for s in stub_processes(server_pid) if s.instance != s.model)
        broken = {m for m in others if live[m] < admin.stub_count(m)}
    for group in (ensembles, others):
        for model in group:
            admin.unload(model)
        if not _wait_unloaded(admin, [m for m in group if m not in broken], deadline, interrupted):
            return False
    return True


def _mapped_regions(pid: int) -> set[str]:
    """The Python-backend /dev/shm regions process ``pid`` has mapped."""
    try:
        with open(f"/proc/{pid}/maps") as f:
            return set(re.findall(r"/dev/shm/(triton_python_backend_shm_region_[0-9A-Za-z_-]+)", f.read()))
    except OSError:
        return set()


def _remove_regions(regions: set[str]) -> None:
    for name in regions:
        path = Path("/dev/shm") / name
        if name.startswith("triton_python_backend_shm_region_") and path.exists():
            path.unlink(missing_ok=True)


_AFTER_DRAIN_S = 5.0


def serve(options: ServerOptions, drain_timeout_s: float = 30.0) -> int:
    """Run tritonserver under the launcher until it exits or a signal stops it.

    Returns the exit status: 0 after a clean stop. Must run in the main thread
    (it handles SIGINT and SIGTERM).
    """
    # stdin: a process group other than the terminal's must not read from it.
    process = subprocess.Popen(command(options), env=environment(), stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
    admin = Admin(options.host, options.http_port, options.admin_key)
    supervisor = None
    if options.model_control_mode == "explicit":
        supervisor = Supervisor(process.pid, admin)
        supervisor.start()

    signals: list[int] = []
    stop = threading.Event()
    terminated = []

    def terminate():
        if not terminated and process.poll() is None:
            terminated.append(True)
            process.send_signal(signal.SIGTERM)

    def on_signal(signum, frame):
        signals.append(signum)
        stop.set()
        if len(signals) > 1:
            terminate()  # a second signal: stop without draining

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, on_signal)

    while not stop.wait(0.2):
        if process.poll() is not None:
            break
    if supervisor is not None:
        supervisor.stop()

    drained = False
    if process.poll() is None and options.model_control_mode == "explicit" and len(signals) == 1:
        start = time.monotonic()
        try:
            drained = drain(admin, drain_timeout_s, interrupted=lambda: len(signals) > 1, server_pid=process.pid)
        except (OSError, ValueError) as e:
            _log(f"drain failed: {e}")
        _log(f"drained in {time.monotonic() - start:.1f} s" if drained else "drain incomplete; stopping anyway")
    regions = _mapped_regions(process.pid) | (supervisor.shm_regions if supervisor is not None else set())
    terminate()

    try:
        # Once drained, nothing is left for tritonserver to finish, yet it can
        # wait out its whole exit timeout (then exit 1): for idle HTTP
        # keep-alive connections of clients, and for the models of dead stubs,
        # which this Triton build never finishes unloading. Don't wait for those.
        return_code = process.wait(_AFTER_DRAIN_S if drained else options.exit_timeout_s + 10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        return_code = 0 if drained else 1
        if drained:
            _log("tritonserver still waiting after the drain (idle client connections, dead stubs); ended it")
    if return_code < 0:
        return_code = 128 - return_code  # killed by a signal, as a shell reports it
    # Left behind by a dead stub's model, or by a tritonserver that was killed.
    _remove_regions(regions)
    return return_code


def main(argv: list[str] | None = None) -> None:
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
    parser.add_argument("--drain-timeout", type=float, default=30.0,
                        help="seconds in-flight requests get to finish after SIGTERM / Ctrl-C (default 30)")
    parser.add_argument("--exit-timeout", type=int, default=30,
                        help="tritonserver's own --exit-timeout-secs, after the drain (default 30)")
    parser.add_argument("extra", nargs="*", help="further tritonserver arguments, after --")
    a = parser.parse_args(argv)
    key = os.environ.get(ADMIN_KEY_ENV) or _new_key()
    if not _KEY_CHARS.match(key):
        raise SystemExit(f"{ADMIN_KEY_ENV} may contain only letters, digits and . _ ~ -")
    options = ServerOptions(
        model_repository=str(Path(a.model_repository).resolve()),
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
    print(f"serving {options.model_repository} on {a.host}: HTTP {a.http_port}, gRPC {a.grpc_port}, "
          f"metrics {a.metrics_port}; model control {a.model_control_mode}, {admin} (Ctrl-C stops)", flush=True)
    sys.exit(serve(options, drain_timeout_s=a.drain_timeout))


if __name__ == "__main__":
    main()
