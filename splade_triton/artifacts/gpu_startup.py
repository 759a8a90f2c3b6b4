"""The GPU image's start-up step: find or build the TensorRT plan for this GPU, assemble the repository.

    python -m splade_triton.artifacts.gpu_startup prepare --engines /engines --output /opt/splade/repository
    python -m splade_triton.artifacts.gpu_startup check --plan PLAN
    python -m splade_triton.artifacts.gpu_startup probe

``prepare`` looks for a plan built for this TensorRT release and GPU family,
from the pipeline's ONNX graph, profile and precision, in
``<engines>/trt<version>-sm<cc>/``; when none matches it builds one
(``python -m export.build_engine``), validates it (``python -m
export.validate_engine``) and sets a failing one aside; then it assembles the
GPU repository with that plan. ``check`` refuses a plan this server cannot
run. Without TensorRT or a GPU every command exits at once, status 3, with
one line.

The build and the validation run in child processes: they import the
``tensorrt`` Python package, which loads its own TensorRT library, while this
process probes the library Triton's backend loads (``gpu_probe``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from splade_triton.artifacts.gpu_probe import EXIT_UNAVAILABLE, Unavailable, missing_message, probe_gpu, probe_tensorrt_library, runtime
from splade_triton.artifacts.files import file_sha256
from splade_triton.artifacts.provenance import expected_provenance, plan_problems, read_provenance
from splade_triton.artifacts.gpu_pipeline import DEFAULT_SPEC, GpuPipeline
from splade_triton.artifacts.repository import ROOT, Pipeline, assemble
from splade_triton.artifacts.shapes import engine_profile

__all__ = ["main", "plan_folder", "with_queue_delay"]

TOOL = "splade-triton GPU start-up"


def with_queue_delay(pipeline: Pipeline, delay_us: int | None) -> Pipeline:
    """``pipeline`` with the encoder's dynamic-batching queue delay set (None: as specified)."""
    if delay_us is None:
        return pipeline
    if delay_us < 0:
        raise ValueError(f"the queue delay must be >= 0 microseconds, got {delay_us}")
    return pipeline.with_step("encoder", config=f"dynamic_batching {{ max_queue_delay_microseconds: {delay_us} }}")


def plan_folder(engines: Path, found: dict) -> Path:
    """One folder per TensorRT release and GPU family, so a volume shared by several kinds of GPU keeps a plan for each."""
    return Path(engines) / f"trt{found['tensorrt_version']}-sm{found['gpu']['compute_capability']}"


def _check(args) -> int:
    try:
        found = runtime()
        provenance = read_provenance(args.plan)
    except Unavailable as e:
        print(missing_message("engine check", [str(e)]), file=sys.stderr)
        return EXIT_UNAVAILABLE
    except ValueError as e:
        print(f"refusing TensorRT plan {args.plan}: {e}", file=sys.stderr)
        return 1
    problems = plan_problems(provenance, found)
    if problems:
        print(f"refusing TensorRT plan {args.plan}: {'; '.join(problems)}. Rebuild it for this server "
              f"(python -m export.build_engine, or start the image with SPLADE_BUILD_ENGINE=auto).", file=sys.stderr)
        return 1
    print(f"plan {args.plan} matches TensorRT {found['tensorrt_version']} on {found['gpu']['name']} "
          f"(compute capability {found['gpu']['compute_capability']})")
    return 0


def _tool(module: str, *args) -> int:
    """Run one of the project's command-line tools (export/) in a child process."""
    return subprocess.call([sys.executable, "-m", module, *map(str, args)], cwd=ROOT)


def _prepare(args) -> int:
    try:
        found = runtime()
    except Unavailable as e:
        print(missing_message(TOOL, [str(e)]), file=sys.stderr)
        return EXIT_UNAVAILABLE
    gpu = found["gpu"]
    settings = GpuPipeline.load(onnx=args.onnx, pipeline=with_queue_delay(Pipeline.load(args.pipeline), args.queue_delay_us))
    pipeline, onnx_path = settings.pipeline, settings.onnx
    profile = engine_profile(settings.shapes, args.opt_batch, args.opt_seq)
    if not onnx_path.is_file():
        print(f"{TOOL}: ONNX model not found: {onnx_path} (export it with python -m export.export_onnx)", file=sys.stderr)
        return 1
    fp32 = ",".join(settings.fp32_groups) if args.fp32 is None else args.fp32
    groups = [g for g in fp32.split(",") if g] if args.precision == "fp16" else []
    expected = expected_provenance(file_sha256(onnx_path), profile.as_dict(), args.precision, groups)
    plan_dir = plan_folder(args.engines, found)
    plan = plan_dir / "model.plan"
    problems = ["there is none"]
    if plan.is_file():
        try:
            problems = plan_problems(read_provenance(plan), found, expected)
        except ValueError as e:
            problems = [str(e)]
    if problems:
        reason = "; ".join(problems)
        if args.build == "never":
            print(f"{TOOL}: no usable TensorRT plan in {plan_dir}: {reason}; SPLADE_BUILD_ENGINE=never forbids building one",
                  file=sys.stderr)
            return 1
        print(f"splade-triton: building a TensorRT plan for {gpu['name']} ({reason})", file=sys.stderr, flush=True)
        plan_dir.mkdir(parents=True, exist_ok=True)
        common = ["--onnx", onnx_path.resolve(), "--pipeline", args.pipeline.resolve()]
        build = ["--output", plan, "--precision", args.precision, "--fp32", fp32]
        build += ["--opt-batch", args.opt_batch] if args.opt_batch is not None else []
        build += ["--opt-seq", args.opt_seq] if args.opt_seq is not None else []
        status = _tool("export.build_engine", *common, *build)
        if status != 0:
            return status
        # Every kind through the one fidelity gate (SPLADE weights; BGE-M3 dense, lexical, ColBERT).
        if args.validate_texts > 0:
            status = _tool("export.validate_engine", *common, "--plan", plan, "--texts", args.validate_texts, "--record")
            if status != 0:
                # A plan that failed validation must not be picked up by the next start.
                plan.rename(plan.with_suffix(".rejected"))
                return status
        problems = plan_problems(read_provenance(plan), found, expected)
        if problems:
            print(f"{TOOL}: the new plan does not match: {'; '.join(problems)}", file=sys.stderr)
            return 1
    else:
        print(f"splade-triton: using the TensorRT plan in {plan_dir} (built for {gpu['name']})", file=sys.stderr)
    assemble(args.output, [pipeline], device="gpu", plans={pipeline.name: plan})
    print(f"splade-triton: GPU repository ready in {args.output}", file=sys.stderr)
    return 0


def _probe() -> int:
    found = {}
    for key, probe in (("gpu", lambda: probe_gpu()), ("tensorrt_library", probe_tensorrt_library)):
        try:
            found[key] = probe()
        except Unavailable as e:
            found[key] = {"unavailable": str(e)}
    print(json.dumps(found, indent=2))
    return 0 if all("unavailable" not in v for v in found.values()) else EXIT_UNAVAILABLE


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m splade_triton.artifacts.gpu_startup", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("probe", help="print the GPU and TensorRT library this process sees")

    check = sub.add_parser("check", help="refuse a plan this server cannot run (TensorRT release, GPU family)")
    check.add_argument("--plan", type=Path, required=True)

    prep = sub.add_parser("prepare", help="find or build the plan for this GPU, then assemble the GPU repository")
    prep.add_argument("--pipeline", type=Path, default=DEFAULT_SPEC, help="the pipeline spec to serve")
    prep.add_argument("--onnx", type=Path, default=None, help="default: the pipeline's model directory/model.onnx")
    prep.add_argument("--engines", type=Path, required=True, help="folder (a volume) keeping plans across restarts")
    prep.add_argument("--output", type=Path, required=True, help="the repository to assemble")
    prep.add_argument("--precision", choices=("fp16", "fp32"), default="fp16")
    prep.add_argument("--fp32", default=None, help="FP32 groups of an FP16 engine (default: the kind's, gpu_pipeline.DEFAULT_FP32)")
    prep.add_argument("--opt-batch", type=int, default=None)
    prep.add_argument("--opt-seq", type=int, default=None)
    prep.add_argument("--build", choices=("auto", "never"), default="auto")
    prep.add_argument("--validate-texts", type=int, default=300, help="validate a new plan on this many texts (0: skip)")
    prep.add_argument("--queue-delay-us", type=int, default=None, help="the encoder's dynamic-batching queue delay")
    args = parser.parse_args(argv)

    if args.command == "probe":
        sys.exit(_probe())
    if args.command == "check":
        sys.exit(_check(args))
    try:
        sys.exit(_prepare(args))
    except (ValueError, FileNotFoundError) as e:
        print(f"{TOOL}: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
