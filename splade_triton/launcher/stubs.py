"""tritonserver's Python-backend stub processes and their /dev/shm regions, read from /proc."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

STUB_NAME = "triton_python_backend_stub"
REGION_PREFIX = "triton_python_backend_shm_region_"


@dataclass(frozen=True)
class StubProcess:
    """One Python-backend stub: a child process of tritonserver per model instance."""

    pid: int
    model: str
    instance: str  # the model's name for the short-lived stub that checks a config while loading
    shm_region: str  # its /dev/shm file


def children(pid: int) -> list[int]:
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
    for child in children(launcher_pid):
        try:
            if os.readlink(f"/proc/{child}/exe").endswith("/tritonserver"):
                return child
        except OSError:
            continue
    return None


def is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True


def parse_stub_argv(pid: int, argv: list[str]) -> StubProcess | None:
    """A stub's identity from its command line, or None if it is not a stub we understand.

    Found by content, not position (the argument order differs between
    Python-backend releases): the model from the ``.../<model>/<version>/model.py``
    path, its shm region by prefix, its instance as the argument named
    ``<model>`` or ``<model>_...``.
    """
    if not argv or not argv[0].endswith(STUB_NAME):
        return None
    script = next((a for a in argv[1:] if a.endswith(".py")), None)
    if script is None:
        return None
    model = Path(script).parent.parent.name
    region = next((a for a in argv[1:] if a.startswith(REGION_PREFIX) or f"/{REGION_PREFIX}" in a), None)
    instance = next((a for a in argv[1:] if a != script and (a == model or a.startswith(model + "_"))), None)
    if not model or region is None or instance is None:
        return None
    return StubProcess(pid, model, instance, region.rsplit("/", 1)[-1])


def stub_processes(server_pid: int) -> list[StubProcess]:
    """The live Python-backend stubs of the tritonserver process ``server_pid``."""
    stubs = []
    for child in children(server_pid):
        try:
            with open(f"/proc/{child}/cmdline", "rb") as f:
                argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
        except OSError:
            continue
        stub = parse_stub_argv(child, argv)
        if stub is not None and not is_zombie(child):
            stubs.append(stub)
    return stubs


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far (0 if gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def mapped_regions(pid: int) -> set[str]:
    """The Python-backend /dev/shm regions process ``pid`` has mapped."""
    try:
        with open(f"/proc/{pid}/maps") as f:
            return set(re.findall(rf"/dev/shm/({REGION_PREFIX}[0-9A-Za-z_-]+)", f.read()))
    except OSError:
        return set()


def remove_regions(regions: set[str]) -> None:
    for name in regions:
        path = Path("/dev/shm") / name
        if name.startswith(REGION_PREFIX) and path.exists():
            path.unlink(missing_ok=True)
