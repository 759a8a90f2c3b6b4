"""Launch a real tritonserver on a model repository (CPU, from nvidia-pytriton).

The ``nvidia-pytriton`` wheel carries the tritonserver binary, the Python
backend, and one Python-backend stub per Python version. This module puts the
stub for the running interpreter in place and builds the command line and
environment the stub needs (it runs Python isolated, so the virtual
environment must be first on PATH, and libpython must be findable).

    python -m splade_triton.server --model-repository model_repository
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ServerOptions", "command", "environment", "prepare"]


def _pytriton_root() -> Path:
    try:
        import pytriton
    except ImportError:
        raise SystemExit("nvidia-pytriton is not installed in this environment (run script/setup)") from None
    return Path(pytriton.__file__).resolve().parent / "tritonserver"


@dataclass
class ServerOptions:
    model_repository: str
    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    log_verbose: int = 0
    exit_timeout_s: int = 30
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
    backends = prepare()
    binary = _pytriton_root() / "bin" / "tritonserver"
    host = options.host
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
        # Python models exchange tensors through /dev/shm; grow it in big steps.
        "--backend-config=python,shm-default-byte-size=16777216",
        "--backend-config=python,shm-growth-byte-size=16777216",
    ]
    if not _has_gpu():
        args += ["--pinned-memory-pool-byte-size=0", "--cuda-memory-pool-byte-size=0:0", "--allow-gpu-metrics=false"]
    return args + list(options.extra_args)


def environment(base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for tritonserver and its Python-backend stubs."""
    env = dict(os.environ if base is None else base)
    # The stub takes sys.prefix from the first python3 on PATH: this venv's.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    libdirs = [sysconfig.get_config_var("LIBDIR") or ""]
    env["LD_LIBRARY_PATH"] = os.pathsep.join(d for d in [*libdirs, env.get("LD_LIBRARY_PATH", "")] if d)
    # The tokenizer model parallelises itself per call; no fork warnings.
    env.setdefault("TOKENIZERS_PARALLELISM", "true")
    return env


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve a model repository with tritonserver.")
    parser.add_argument("--model-repository", default="model_repository")
    parser.add_argument("--host", default="127.0.0.1", help="address for HTTP, gRPC and metrics (default 127.0.0.1)")
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--metrics-port", type=int, default=8002)
    parser.add_argument("--log-verbose", type=int, default=0)
    parser.add_argument("extra", nargs="*", help="further tritonserver arguments, after --")
    a = parser.parse_args(argv)
    options = ServerOptions(
        model_repository=str(Path(a.model_repository).resolve()),
        host=a.host,
        http_port=a.http_port,
        grpc_port=a.grpc_port,
        metrics_port=a.metrics_port,
        log_verbose=a.log_verbose,
        extra_args=tuple(a.extra),
    )
    args = command(options)
    print(f"serving {options.model_repository} on {a.host}: HTTP {a.http_port}, gRPC {a.grpc_port}, "
          f"metrics {a.metrics_port} (Ctrl-C stops)", flush=True)
    # exec: tritonserver itself gets Ctrl-C / SIGTERM and shuts down gracefully.
    os.execve(args[0], args, environment())


if __name__ == "__main__":
    main()
