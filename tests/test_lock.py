"""The hashed locks in requirements/: one version per package everywhere, every pin hashed.

Reads the lock files only: nothing here depends on what happens to be installed.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import ROOT

REQUIREMENTS = ROOT / "requirements"
LOCKS = ("dev", "runtime", "image", "tools")


def requirement_names(path: Path) -> set[str]:
    """Package names a *.in file asks for, following -r includes."""
    names = set()
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("-r "):
            names |= requirement_names(path.parent / line[3:].strip())
        elif line:
            names.add(normalise(re.split(r"[\[=<>~!; ]", line, maxsplit=1)[0]))
    return names


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def lock(name: str) -> dict[str, tuple[str, int]]:
    """A lock file's pins: package -> (version, number of hashes)."""
    text = (REQUIREMENTS / f"{name}.txt").read_text()
    found = {}
    # A requirement, its continuation lines, up to the next requirement.
    for block in re.split(r"\n(?=[A-Za-z0-9])", text):
        first = block.split("\\", 1)[0].strip()
        if not first or first.startswith(("#", "-")):
            continue
        package, sep, pinned = first.partition("==")
        assert sep, f"{name}.txt: {first!r} is not pinned with =="
        found[normalise(re.sub(r"\[.*\]", "", package))] = (pinned.split(";")[0].strip(), block.count("--hash=sha256:"))
    return found


@pytest.mark.parametrize("name", LOCKS)
def test_every_pin_is_hashed_and_every_input_locked(name):
    pins = lock(name)
    assert pins, f"{name}.txt is empty"
    unhashed = sorted(p for p, (_, hashes) in pins.items() if hashes == 0)
    assert not unhashed, f"{name}.txt pins without a hash: {unhashed}"
    missing = sorted(requirement_names(REQUIREMENTS / f"{name}.in") - set(pins))
    assert not missing, f"{name}.in asks for {missing}, which {name}.txt does not lock (run script/lock)"


@pytest.mark.parametrize("name", ("runtime", "image"))
def test_a_package_has_the_same_version_in_every_lock(name):
    dev = lock("dev")
    for package, (pinned, _) in lock(name).items():
        if package in dev:
            assert pinned == dev[package][0], f"{package}: {name}.txt {pinned}, dev.txt {dev[package][0]}"


def test_the_serving_runtime_is_locked_for_the_image():
    runtime, image = lock("runtime"), lock("image")
    assert set(runtime) <= set(image), sorted(set(runtime) - set(image))


def test_installers_use_the_locks_with_hash_checking():
    setup = (ROOT / "script" / "setup").read_text()
    assert "--require-hashes --no-deps" in setup and "requirements/dev.txt" in setup
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    assert "--require-hashes --no-deps" in dockerfile and "requirements/image.txt" in dockerfile
