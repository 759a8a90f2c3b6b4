"""Find tritonserver and build its command line and environment.

Two installations are known: the ``nvidia-pytriton`` wheel (CPU; carries the
binary, the Python backend and one Python-backend stub per Python version,
which must be put in place for this interpreter) and NVIDIA's stock NGC image
(``/opt/tritonserver``, the GPU image's base).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import sys
import sysconfig
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from splade_triton.launcher.admin import ADMIN_KEY_ENV, new_key, restricted_flags

NGC_ROOT = Path("/opt/tritonserver")
TRITONSERVER_ENV = "SPLADE_TRITONSERVER"
STUB = "triton_python_backend_stub"


@dataclass(frozen=True)
class Installation:
    binary: Path
    backends: Path
    kind: str  # "pytriton" | "ngc"


def _pytriton_root() -> Path | None:
    try:
        import pytriton
    except ImportError:
        return None
    return Path(pytriton.__file__).resolve().parent / "tritonserver"


def _digest(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def install_stub(source: Path, target: Path) -> bool:
    """Put ``source`` at ``target`` unless the same bytes are there; True if it was written.

    Launches may run at once: the copy goes to a temporary name in the same
    folder and is renamed over the target (atomic), under a lock file, so no
    launch sees a half-written stub and no running stub is overwritten in place
    ("text file busy").
    """
    if target.is_file() and _digest(target) == _digest(source):
        return False
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.is_file() and _digest(target) == _digest(source):
            return False
        fd, temporary = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
        os.close(fd)
        try:
            shutil.copy2(source, temporary)
            os.replace(temporary, target)
        finally:
            Path(temporary).unlink(missing_ok=True)
    return True


def find() -> Installation:
    """The tritonserver to run: ``$SPLADE_TRITONSERVER`` (a binary beside ``../backends``, as in
    NVIDIA's image), else pytriton's from this environment, else ``/opt/tritonserver``'s."""
    chosen = os.environ.get(TRITONSERVER_ENV)
    if chosen:
        binary = Path(chosen)
        if not binary.is_file():
            raise SystemExit(f"{TRITONSERVER_ENV}={chosen}: no such file")
        return Installation(binary, binary.parent.parent / "backends", "ngc")
    root = _pytriton_root()
    if root is not None and (root / "bin" / "tritonserver").is_file():
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        stub = root / "python_backend_stubs" / version / STUB
        if not stub.is_file():
            raise SystemExit(f"nvidia-pytriton has no Python-backend stub for Python {version}")
        install_stub(stub, root / "backends" / "python" / STUB)
        return Installation(root / "bin" / "tritonserver", root / "backends", "pytriton")
    if (NGC_ROOT / "bin" / "tritonserver").is_file():
        return Installation(NGC_ROOT / "bin" / "tritonserver", NGC_ROOT / "backends", "ngc")
    raise SystemExit("no tritonserver: install nvidia-pytriton (script/setup) or run in NVIDIA's tritonserver image")


def has_gpu() -> bool:
    return Path("/dev/nvidia0").exists()


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
    admin_key: str = field(default_factory=new_key, repr=False)
    extra_args: tuple[str, ...] = ()


def command(options: ServerOptions, installation: Installation | None = None) -> list[str]:
    """The tritonserver command line for ``options``."""
    if options.model_control_mode not in ("explicit", "none"):
        raise ValueError(f"model_control_mode must be 'explicit' or 'none', got {options.model_control_mode!r}")
    restricted = restricted_flags(options.admin_key)
    found = installation or find()
    host = options.host
    args = [
        str(found.binary),
        f"--model-repository={options.model_repository}",
        f"--backend-directory={found.backends}",
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
        *restricted,
        # Python models exchange tensors through /dev/shm; grow it in big steps.
        "--backend-config=python,shm-default-byte-size=16777216",
        "--backend-config=python,shm-growth-byte-size=16777216",
    ]
    if options.model_control_mode == "explicit":
        args.append("--load-model=*")
    if not has_gpu():
        args += ["--pinned-memory-pool-byte-size=0", "--cuda-memory-pool-byte-size=0:0", "--allow-gpu-metrics=false"]
    return args + list(options.extra_args)


def environment(base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for tritonserver and its Python-backend stubs."""
    env = dict(os.environ if base is None else base)
    # The model code has no use for the admin key.
    env.pop(ADMIN_KEY_ENV, None)
    # The stub takes sys.prefix from the first python3 on PATH: this interpreter's.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    libdirs = [sysconfig.get_config_var("LIBDIR") or ""]
    env["LD_LIBRARY_PATH"] = os.pathsep.join(d for d in [*libdirs, env.get("LD_LIBRARY_PATH", "")] if d)
    # The tokenizer model parallelises itself per call; no fork warnings.
    env.setdefault("TOKENIZERS_PARALLELISM", "true")
    return env
