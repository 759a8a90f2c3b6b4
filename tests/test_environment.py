"""The installed environment is the lock: .venv holds exactly requirements/dev.txt, and every
pip that script/ and bench/ run checks hashes (tests/test_lock.py checks the lock files themselves)."""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.test_lock import lock, normalise

# Installed without being pinned: pip itself (the venv's seed, which installs the lock).
UNPINNED = {"pip"}


def site_packages(venv: Path) -> list[Path]:
    return sorted(venv.glob("lib/python3*/site-packages"))


def drift(paths) -> list[str]:
    """Every installed distribution under ``paths`` that requirements/dev.txt does not pin at
    its version (pip aside), and every pin not installed."""
    pins = lock("dev")
    installed: dict[str, set[str]] = {}
    for dist in importlib.metadata.distributions(path=[str(p) for p in paths]):
        installed.setdefault(normalise(dist.metadata["Name"]), set()).add(dist.version)
    problems = []
    for name, versions in sorted(installed.items()):
        if name in UNPINNED:
            continue
        if name not in pins:
            problems.append(f"{name} {', '.join(sorted(versions))} is installed but not in requirements/dev.txt")
        elif versions != {pins[name][0]}:
            problems.append(f"{name} {', '.join(sorted(versions))} is installed; requirements/dev.txt pins {pins[name][0]}")
    problems += [f"{name} {pins[name][0]} is pinned but not installed" for name in sorted(set(pins) - set(installed))]
    return problems


def test_the_venv_is_exactly_the_lock():
    paths = site_packages(ROOT / ".venv")
    if not paths:
        pytest.fail("no .venv: run script/setup")
    assert drift(paths) == []


def test_a_distribution_off_the_lock_is_reported(tmp_path):
    """The comparison can fail: a venv copy with one package at another version and one unknown."""
    site = tmp_path / "lib" / "python3.11" / "site-packages"
    pins = lock("dev")
    for name, (version, _) in pins.items():
        if name == "numpy":
            version = "0.0.1"
        (site / f"{name}-{version}.dist-info").mkdir(parents=True)
        (site / f"{name}-{version}.dist-info" / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    extra = site / "left_pad-1.0.dist-info"
    extra.mkdir()
    (extra / "METADATA").write_text("Metadata-Version: 2.1\nName: left-pad\nVersion: 1.0\n")
    assert drift(site_packages(tmp_path)) == [
        "left-pad 1.0 is installed but not in requirements/dev.txt",
        f"numpy 0.0.1 is installed; requirements/dev.txt pins {pins['numpy'][0]}",
    ]


def pip_invocations() -> list[tuple[str, str]]:
    """(file, command) of every pip install / download in script/, docker/ and bench/."""
    found = []
    for path in [*sorted((ROOT / "script").iterdir()), *sorted((ROOT / "docker").glob("Dockerfile*"))]:
        # Shell: one logical line per command (backslash continuations joined, `&&` chains split).
        for line in re.split(r"\n|&&", path.read_text().replace("\\\n", " ")):
            if re.search(r"\bpip3?\"?\s+(install|download)\b", line) and not line.lstrip().startswith("#"):
                found.append((path.name, line.strip()))
    for path in sorted((ROOT / "bench").glob("*.py")):
        text = path.read_text()
        # Python: an argument list running `-m pip install|download`, to its closing bracket.
        for match in re.finditer(r'"pip",\s*"(install|download)"[^\]]*\]', text):
            found.append((path.name, match.group(0)))
    return found


def test_every_pip_install_checks_hashes():
    invocations = pip_invocations()
    names = {name for name, _ in invocations}
    assert {"setup", "run.py", "Dockerfile"} <= names, invocations  # the scan finds the ones known to exist
    unhashed = [(name, command) for name, command in invocations if "--require-hashes" not in command]
    assert not unhashed, f"pip without --require-hashes: {unhashed}"
    # perf_analyzer's wheel: pinned with its hash in requirements/perf-analyzer.txt.
    pinned = lock("perf-analyzer")
    assert pinned == {"tritonclient": ("2.50.0", 1)}
