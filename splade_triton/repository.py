"""Assemble a model repository for CPU or GPU from one shared source.

``model_repository/`` is the CPU repository. The GPU one is the same
repository with an overlay (``deploy/gpu/``) applied:

- ``<model>/config.pbtxt`` in the overlay replaces the model's config and its
  version folder (the encoder: a TensorRT plan instead of a Python model);
- ``<model>/config.override.pbtxt`` is merged into the model's config: its
  ``parameters`` replace those of the same key, other fields it sets replace
  the source's (the tokenizer's padding settings).

Everything else (the tokenizer and sparsify code, the ensemble) is shared.

    python -m splade_triton.repository --device gpu --output build/gpu_repository --plan build/engine/model.plan
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from splade_triton.shapes import read_config

__all__ = ["DEVICES", "GPU_OVERLAY", "SOURCE", "assemble", "model_configs"]

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "model_repository"
GPU_OVERLAY = ROOT / "deploy" / "gpu"
DEVICES = ("cpu", "gpu")

_REPLACE = "config.pbtxt"
_MERGE = "config.override.pbtxt"
_IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc")


def _is_repeated(field) -> bool:
    flag = getattr(field, "is_repeated", None)  # protobuf >= 5.28; .label is deprecated there
    return flag if isinstance(flag, bool) else field.label == field.LABEL_REPEATED


def _is_map(field) -> bool:
    return field.message_type is not None and field.message_type.GetOptions().map_entry


def _overlay_dir(device: str, overlay: Path | None) -> Path | None:
    if device not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    if device == "cpu":
        return None
    return GPU_OVERLAY if overlay is None else Path(overlay)


def model_configs(
    source: Path = SOURCE, device: str = "cpu", overlay: Path | None = None, queue_delay_us: int | None = None
) -> dict[str, model_config_pb2.ModelConfig]:
    """The configs the repository for ``device`` holds, keyed by model name.

    ``queue_delay_us`` sets the encoder's dynamic-batching queue delay.
    """
    source = Path(source)
    overlay_dir = _overlay_dir(device, overlay)
    configs = {}
    for model in sorted(p.parent.name for p in source.glob("*/config.pbtxt")):
        config = read_config(source / model / _REPLACE)
        if overlay_dir is not None:
            if (overlay_dir / model / _REPLACE).is_file():
                config = read_config(overlay_dir / model / _REPLACE)
            if (overlay_dir / model / _MERGE).is_file():
                override = read_config(overlay_dir / model / _MERGE)
                if override.name and override.name != config.name:
                    raise ValueError(f"{overlay_dir / model / _MERGE} names model {override.name!r}, not {model!r}")
                # MergeFrom replaces map entries (parameters) by key and set
                # scalars; repeated fields would be appended, so an override
                # must not set inputs, outputs or instance groups.
                for field, _ in override.ListFields():
                    if _is_repeated(field) and not _is_map(field):
                        raise ValueError(f"{overlay_dir / model / _MERGE}: '{field.name}' cannot be merged; replace the whole config instead")
                config.MergeFrom(override)
        if config.name != model:
            raise ValueError(f"{model}/config.pbtxt names model {config.name!r}")
        configs[model] = config
    if queue_delay_us is not None:
        if queue_delay_us < 0:
            raise ValueError(f"queue delay must be >= 0 microseconds, got {queue_delay_us}")
        configs["encoder"].dynamic_batching.max_queue_delay_microseconds = queue_delay_us
    return configs


def _label(path: Path) -> str:
    path = Path(path).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def _write_config(path: Path, config: model_config_pb2.ModelConfig, note: str) -> None:
    path.write_text(f"# {note}\n" + text_format.MessageToString(config))


def assemble(
    output: Path,
    device: str,
    source: Path = SOURCE,
    overlay: Path | None = None,
    plan: Path | None = None,
    queue_delay_us: int | None = None,
    copy_plan: bool = False,
) -> Path:
    """Write the repository for ``device`` to ``output`` (replaced if present).

    On GPU, ``plan`` (a TensorRT engine) becomes ``encoder/1/model.plan``: a
    symbolic link unless ``copy_plan``, so a plan kept in a volume is not
    duplicated. Returns ``output``.
    """
    source, output = Path(source), Path(output)
    overlay_dir = _overlay_dir(device, overlay)
    configs = model_configs(source, device, overlay, queue_delay_us)
    if output.resolve() == source.resolve():
        raise ValueError("the output must not be the source repository")
    if output.exists():
        shutil.rmtree(output)
    output.mkdir(parents=True)
    for model, config in configs.items():
        replaced = overlay_dir is not None and (overlay_dir / model / _REPLACE).is_file()
        base = overlay_dir / model / _REPLACE if replaced else source / model / _REPLACE
        if replaced:
            # A different kind of model: none of the source's version folder applies.
            (output / model / "1").mkdir(parents=True)
        else:
            shutil.copytree(source / model, output / model, ignore=_IGNORED, symlinks=False)
        if config == read_config(base):
            shutil.copyfile(base, output / model / _REPLACE)  # as written, comments included
            continue
        origin = _label(base)
        if overlay_dir is not None and (overlay_dir / model / _MERGE).is_file():
            origin += f" + {_label(overlay_dir / model / _MERGE)}"
        _write_config(output / model / _REPLACE, config, f"Generated by splade_triton.repository ({device}) from {origin}")
    if device == "gpu":
        target = output / "encoder" / "1" / "model.plan"
        if plan is not None:
            plan = Path(plan).resolve()
            if not plan.is_file():
                raise FileNotFoundError(f"TensorRT plan not found: {plan} (build it with export/build_engine.py)")
            if copy_plan:
                shutil.copyfile(plan, target)
            else:
                os.symlink(plan, target)
    return output


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=DEVICES, required=True)
    parser.add_argument("--output", type=Path, required=True, help="repository to write (replaced if present)")
    parser.add_argument("--source", type=Path, default=SOURCE)
    parser.add_argument("--overlay", type=Path, default=None, help=f"GPU overlay (default {GPU_OVERLAY.relative_to(ROOT)})")
    parser.add_argument("--plan", type=Path, default=None, help="TensorRT plan for encoder/1/model.plan (GPU)")
    parser.add_argument("--copy-plan", action="store_true", help="copy the plan instead of linking it")
    parser.add_argument("--queue-delay-us", type=int, default=None, help="encoder dynamic-batching queue delay")
    args = parser.parse_args(argv)
    try:
        out = assemble(args.output, args.device, args.source, args.overlay, args.plan, args.queue_delay_us, args.copy_plan)
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"splade_triton.repository: {e}") from None
    print(f"assembled the {args.device} repository in {out}")


if __name__ == "__main__":
    main()
