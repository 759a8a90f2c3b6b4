"""Assemble a model repository from committed templates and per-pipeline specs.

A pipeline is one ensemble and its composing models. Its spec
(``pipelines/<name>.toml``) names the kind of pipeline, the exported model
directory (``python -m export.export_onnx``) and its settings::

    kind = "splade"                        # templates/splade/
    model = "build/models/splade-tiny"     # the exported model directory

    [tokenizer.parameters]                 # config.pbtxt parameters of a step
    max_length = 512

    [encoder]                              # other config.pbtxt fields of a step:
    config = "instance_group [ { count: 2, kind: KIND_CPU } ]"   # each replaces the template's

``optional = true`` makes a pipeline whose model is not exported yet (its
model directory or a file a step needs is missing) a skipped pipeline, with
the reason printed, instead of a failed assembly: the default repository
holds ``bge_m3`` once ``build/models/bge-m3`` is exported, and assembles
without it until then.

The kind's templates (``templates/<kind>/``) hold one folder per step with its
config.pbtxt and, for Python steps, model.py (or takes it from
``templates/common/<step>/``, shared by all kinds); ``templates/<kind>/kind.toml``
says which steps are ensembles and which files of the model directory each
step takes and which token lengths per side the assembly writes into the
served config (``[lengths]``: ``serving.sides.effective_length``, never beyond
the export's ``export_info.json`` ``max_length``); ``templates/<kind>/gpu/``
is the GPU variant (a step's
``config.pbtxt`` there replaces the CPU step, a ``config.override.pbtxt`` is
merged into it).

Assembled, step ``<step>`` of pipeline ``<name>`` is the model ``<name>_<step>``
(the step ``ensemble`` is ``<name>`` itself), so pipelines live side by side.
Every Python model gets a copy of ``splade_triton.serving`` beside its
model.py: the repository serves from a plain directory copy (S3, KServe's
storage initializer, a stock tritonserver image) without this project
installed. Tests, benchmarks and the GPU image make their variants through
``Pipeline.with_step`` and ``assemble``, nothing else.

    python -m splade_triton.artifacts.repository --output model_repository
    python -m splade_triton.artifacts.repository --device gpu --plan splade=build/engine/model.plan --output build/gpu_repository
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import tomllib
from pathlib import Path
from typing import Any

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from splade_triton.artifacts.files import staged_directory
from splade_triton.artifacts.shapes import parse_config, read_config

__all__ = ["DEVICES", "PIPELINES", "ROOT", "TEMPLATES", "Pipeline", "assemble", "default_pipelines", "pipeline_configs",
           "skipped"]

ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = ROOT / "templates"
# Step files every kind shares unless it has its own (templates/<kind>/<step>/<file> wins).
COMMON = TEMPLATES / "common"
PIPELINES = ROOT / "pipelines"
SERVING = ROOT / "splade_triton" / "serving"
DEVICES = ("cpu", "gpu")

_REPLACE = "config.pbtxt"
_MERGE = "config.override.pbtxt"
_STEP_KEYS = {"parameters", "config"}
_EXPORT_INFO = "export_info.json"


def _is_repeated(field) -> bool:
    flag = getattr(field, "is_repeated", None)  # protobuf >= 5.28; .label is deprecated there
    return flag if isinstance(flag, bool) else field.label == field.LABEL_REPEATED


def _is_map(field) -> bool:
    return field.message_type is not None and field.message_type.GetOptions().map_entry


def _merge(config: model_config_pb2.ModelConfig, override: model_config_pb2.ModelConfig) -> None:
    """Merge ``override`` into ``config``: a list it sets (input, output,
    instance_group) replaces the template's; messages merge field by field;
    parameters merge by key."""
    for field, _ in override.ListFields():
        if _is_repeated(field) and not _is_map(field):
            config.ClearField(field.name)
    override = model_config_pb2.ModelConfig.FromString(override.SerializeToString())
    override.ClearField("name")
    config.MergeFrom(override)


@dataclasses.dataclass(frozen=True)
class Pipeline:
    """One pipeline: a kind's templates, an exported model directory, settings per step."""

    name: str
    kind: str
    model: Path | None
    steps: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    # Skipped (with the reason printed) by the assembly while its model is not exported.
    optional: bool = False

    @classmethod
    def load(cls, path: Path) -> "Pipeline":
        """Read ``pipelines/<name>.toml``; relative model paths are from the project root."""
        path = Path(path)
        try:
            spec = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise ValueError(f"pipeline spec {path}: {e}") from None
        kind, model = spec.pop("kind", None), spec.pop("model", None)
        optional = spec.pop("optional", False)
        if not isinstance(kind, str):
            raise ValueError(f"pipeline spec {path}: 'kind' (a folder of templates/) is required")
        if not isinstance(optional, bool):
            raise ValueError(f"pipeline spec {path}: 'optional' must be true or false, got {optional!r}")
        steps = {}
        for step, settings in spec.items():
            if not isinstance(settings, dict) or not set(settings) <= _STEP_KEYS:
                raise ValueError(f"pipeline spec {path}: [{step}] may set only {sorted(_STEP_KEYS)}")
            steps[step] = settings
        model_dir = None if model is None else (ROOT / model if not Path(model).is_absolute() else Path(model))
        pipeline = cls(path.stem, kind, model_dir, steps, optional)
        pipeline.configs()  # unknown steps, bad config text: fail here, naming the spec
        return pipeline

    @property
    def templates(self) -> Path:
        return TEMPLATES / self.kind

    def template_file(self, step: str, name: str) -> Path:
        """``templates/<kind>/<step>/<name>``, else the one all kinds share in
        ``templates/common/<step>/`` (e.g. one encoder model.py for every kind)."""
        own = self.templates / step / name
        return own if own.is_file() else COMMON / step / name

    def kind_spec(self) -> dict:
        path = self.templates / "kind.toml"
        if not path.is_file():
            raise ValueError(f"pipeline '{self.name}': unknown kind '{self.kind}' (no {path})")
        return tomllib.loads(path.read_text())

    def model_name(self, step: str) -> str:
        """The served name of ``step``: the pipeline's name for the ensemble."""
        return self.name if step == "ensemble" else f"{self.name}_{step}"

    def with_step(self, step: str, parameters: dict | None = None, config: str | None = None) -> "Pipeline":
        """A variant with more settings for ``step`` (tests, benchmarks, the GPU start-up)."""
        settings = {k: dict(v) if isinstance(v, dict) else v for k, v in self.steps.get(step, {}).items()}
        if parameters:
            settings["parameters"] = {**settings.get("parameters", {}), **parameters}
        if config:
            settings["config"] = "\n".join(filter(None, [settings.get("config"), config]))
        return dataclasses.replace(self, steps={**self.steps, step: settings})

    def renamed(self, name: str) -> "Pipeline":
        return dataclasses.replace(self, name=name)

    def missing_files(self) -> list[Path]:
        """The files of the model directory its steps need that are not there (optional ones aside)."""
        if self.model is None:
            return [Path("<no model directory>")]
        wanted = {name for names in self.kind_spec().get("files", {}).values() for name in names if not name.endswith("?")}
        return [self.model / name for name in sorted(wanted) if not (self.model / name).is_file()]

    def configs(self, device: str = "cpu") -> dict[str, model_config_pb2.ModelConfig]:
        """Step -> the config it is served with on ``device``."""
        return pipeline_configs(self, device)


def default_pipelines() -> list[Pipeline]:
    """Every spec in pipelines/."""
    return [Pipeline.load(p) for p in sorted(PIPELINES.glob("*.toml"))]


def _gpu_dir(pipeline: Pipeline, device: str) -> Path | None:
    if device not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    return pipeline.templates / "gpu" if device == "gpu" else None


def _template_config(pipeline: Pipeline, step: str, device: str) -> tuple[model_config_pb2.ModelConfig, bool]:
    """The step's config before the spec's settings; True when the GPU variant replaced it."""
    gpu = _gpu_dir(pipeline, device)
    if gpu is not None and (gpu / step / _REPLACE).is_file():
        return read_config(gpu / step / _REPLACE), True
    config = read_config(pipeline.templates / step / _REPLACE)
    if gpu is not None and (gpu / step / _MERGE).is_file():
        _merge(config, read_config(gpu / step / _MERGE))
    return config, False


def _spec_parameters(pipeline: Pipeline, step: str) -> set[str]:
    """The parameters of ``step`` its spec sets itself (``parameters`` or its ``config`` text)."""
    settings = pipeline.steps.get(step, {})
    names = set(settings.get("parameters", {}))
    if "config" in settings:
        names |= set(parse_config(settings["config"]).parameters)
    return names


def _bound_lengths(pipeline: Pipeline, kind: dict, configs: dict[str, model_config_pb2.ModelConfig],
                   device: str = "cpu") -> None:
    """Each side's token length written into the served config of the steps that cut texts
    (kind.toml ``[lengths]``): ``serving.sides.effective_length`` of the spec's own settings,
    the export's info and the template's value as the default. So the tokenizer, the GPU
    engine profile and a reader of the config see one length per side. A spec setting
    beyond the model's position embeddings is refused; a template default is lowered."""
    from splade_triton.serving.sides import DEFAULT_MAX_LENGTH, effective_length, read_export_info

    if not kind.get("lengths"):
        return
    where = pipeline.model / _EXPORT_INFO if pipeline.model else Path(_EXPORT_INFO)
    try:
        info = read_export_info(pipeline.model) if pipeline.model else None
    except ValueError as e:
        raise ValueError(f"pipeline '{pipeline.name}': {e}") from None
    for step, names in kind["lengths"].items():
        config, explicit = configs[step], _spec_parameters(pipeline, step)
        template, _ = _template_config(pipeline, step, device)
        settings = {}
        for name in ("max_length", *names):
            if name not in explicit:
                continue
            text = config.parameters[name].string_value
            try:
                settings[name] = int(text)
            except ValueError:
                raise ValueError(f"pipeline '{pipeline.name}' [{step}.parameters] {name} = {text!r}: not an integer") from None
            if settings[name] < 2:
                raise ValueError(f"pipeline '{pipeline.name}' [{step}.parameters] {name} = {text}: must be an integer >= 2")
        for name in names:
            side = name.removesuffix("_max_length")
            default = next((int(template.parameters[key].string_value) for key in (name, "max_length")
                            if key in template.parameters), DEFAULT_MAX_LENGTH)
            try:
                length = effective_length(side, settings, info, default, str(where))
            except ValueError as e:
                raise ValueError(f"pipeline '{pipeline.name}' [{step}.parameters] {e}") from None
            config.parameters[name].string_value = str(length)


def _limit_texts(pipeline: Pipeline, kind: dict, configs: dict[str, model_config_pb2.ModelConfig]) -> None:
    """The CPU encoder's ``max_text_tokens``: the tokenizer's longest side (unless the spec sets
    it), so the encoder's budget check at load and its per-request check see the served length,
    not only the model's positions."""
    encoder = configs.get("encoder")
    lengths = [int(configs[step].parameters[name].string_value) for step, names in kind.get("lengths", {}).items()
               for name in names if name in configs[step].parameters]
    if encoder is None or encoder.backend != "python" or not lengths:
        return
    if "max_text_tokens" not in _spec_parameters(pipeline, "encoder"):
        encoder.parameters["max_text_tokens"].string_value = str(max(lengths))


def pipeline_configs(pipeline: Pipeline, device: str = "cpu") -> dict[str, model_config_pb2.ModelConfig]:
    """Step -> served config: template, GPU variant, spec settings, lengths bounded by the model, served names."""
    kind = pipeline.kind_spec()
    steps = kind["steps"]
    unknown = sorted(set(pipeline.steps) - set(steps))
    if unknown:
        raise ValueError(f"pipeline '{pipeline.name}' sets unknown step(s) {unknown}; kind '{pipeline.kind}' has {sorted(steps)}")
    configs = {}
    for step in steps:
        config, _ = _template_config(pipeline, step, device)
        if config.name != step:
            raise ValueError(f"{pipeline.templates / step / _REPLACE} names model {config.name!r}, not {step!r}")
        settings = pipeline.steps.get(step, {})
        if "config" in settings:
            try:
                _merge(config, parse_config(settings["config"]))
            except text_format.ParseError as e:
                raise ValueError(f"pipeline '{pipeline.name}' [{step}] config: {e}") from None
        for key, value in settings.get("parameters", {}).items():
            text = str(value).lower() if isinstance(value, bool) else str(value)
            config.parameters[key].string_value = text
        config.name = pipeline.model_name(step)
        for ensemble_step in config.ensemble_scheduling.step:
            if ensemble_step.model_name not in steps:
                raise ValueError(f"{pipeline.templates / step / _REPLACE} runs {ensemble_step.model_name!r}, not a step of '{pipeline.kind}'")
            ensemble_step.model_name = pipeline.model_name(ensemble_step.model_name)
        configs[step] = config
    _bound_lengths(pipeline, kind, configs, device)
    _limit_texts(pipeline, kind, configs)
    return configs


def _place(source: Path, target: Path) -> None:
    """A hard link where the file system allows (model files are large), else a copy."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def _copy_serving(version_dir: Path) -> None:
    package = version_dir / "splade_triton"
    (package / "serving").mkdir(parents=True)
    (package / "__init__.py").write_text('"""The serving part of splade_triton, copied here by the repository assembly."""\n')
    for module in sorted(SERVING.glob("*.py")):
        shutil.copyfile(module, package / "serving" / module.name)


def _check_one_graph(pipeline: Pipeline) -> None:
    """The GPU variant runs one TensorRT engine for every request: refuse a model whose sides differ."""
    from splade_triton.serving.sides import read_export_info, read_sides

    sides = read_sides(read_export_info(pipeline.model) if pipeline.model else None)
    if any(side.encoder != "mlm" or side.graph != "model.onnx" for side in sides.values()):
        raise ValueError(f"pipeline '{pipeline.name}': {pipeline.model} has its own query encoder (a static table "
                         "or a second graph); the GPU variant serves one graph for both sides: assemble it for cpu")


def _write_pipeline(output: Path, pipeline: Pipeline, device: str, plan: Path | None) -> None:
    kind = pipeline.kind_spec()
    if device == "gpu":
        _check_one_graph(pipeline)
    configs = pipeline_configs(pipeline, device)
    for step, config in configs.items():
        folder = output / config.name
        version = folder / "1"
        version.mkdir(parents=True)
        template, replaced = _template_config(pipeline, step, device)
        origin = (pipeline.templates / "gpu" if replaced else pipeline.templates) / step
        (folder / _REPLACE).write_text(
            f"# Assembled by splade_triton.artifacts.repository from templates/{origin.relative_to(TEMPLATES)}/{_REPLACE}\n"
            f"# ({device}, pipeline '{pipeline.name}'); edit the template or the pipeline spec, not this file.\n"
            + text_format.MessageToString(config)
        )
        if config.backend == "python" and not replaced:
            shutil.copyfile(pipeline.template_file(step, "model.py"), version / "model.py")
            _copy_serving(version)
        if config.platform == "ensemble":
            (version / ".keep").write_text("")  # object stores drop empty folders
        if config.platform == "tensorrt_plan" or config.backend == "tensorrt":
            if plan is not None:
                plan = Path(plan).resolve()
                if not plan.is_file():
                    raise FileNotFoundError(f"TensorRT plan not found: {plan} (build it with python -m export.build_engine)")
                _place(plan, version / "model.plan")
            continue
        for name in kind.get("files", {}).get(step, []):
            optional = name.endswith("?")
            name = name.rstrip("?")
            if pipeline.model is None:
                raise ValueError(f"pipeline '{pipeline.name}' names no model directory; step {step} needs {name}")
            source = pipeline.model / name
            if source.is_file():
                _place(source, version / name)
            elif not optional:
                raise FileNotFoundError(f"pipeline '{pipeline.name}': {source} is missing (export the model with python -m export.export_onnx)")


def skipped(pipelines: list[Pipeline]) -> dict[str, str]:
    """Optional pipelines whose model is not exported: name -> why they are left out."""
    reasons = {}
    for pipeline in pipelines:
        if pipeline.optional:
            missing = pipeline.missing_files()
            if missing:
                model = pipeline.model
                shown = model.relative_to(ROOT) if model is not None and ROOT in model.parents else model
                what = ("is missing" if model is None or not model.is_dir()
                        else f"lacks {', '.join(p.name for p in missing)}")
                reasons[pipeline.name] = (
                    f"optional pipeline '{pipeline.name}' skipped: its model directory {shown} {what}; export the "
                    f"model with python -m export.export_onnx --output {shown}, then assemble again"
                )
    return reasons


def assemble(output: Path, pipelines: list[Pipeline] | None = None, device: str = "cpu",
             plans: dict[str, Path] | None = None) -> Path:
    """Write the repository holding ``pipelines`` (default: pipelines/*.toml) to ``output``.

    Built in a sibling folder and renamed into place: a failure leaves the
    previous repository as it was. ``plans``: pipeline name -> TensorRT plan
    for the GPU encoder. An optional pipeline whose model is not exported is
    left out, the reason printed on stderr. Returns ``output``.
    """
    pipelines = default_pipelines() if pipelines is None else pipelines
    reasons = skipped(pipelines)
    for reason in reasons.values():
        print(f"splade_triton.artifacts.repository: {reason}", file=sys.stderr)
    pipelines = [p for p in pipelines if p.name not in reasons]
    output = Path(output).resolve()
    names = [p.model_name(step) for p in pipelines for step in p.kind_spec()["steps"]]
    clashes = sorted({n for n in names if names.count(n) > 1})
    if clashes:
        raise ValueError(f"two pipelines would serve the same model name(s): {clashes}")
    if output == TEMPLATES or TEMPLATES in output.parents:
        raise ValueError("the output must not be inside templates/")
    with staged_directory(output) as staging:
        for pipeline in pipelines:
            _write_pipeline(staging, pipeline, device, (plans or {}).get(pipeline.name))
    return output


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, required=True, help="repository to write (replaced if present)")
    parser.add_argument("--device", choices=DEVICES, default="cpu")
    parser.add_argument("--pipeline", type=Path, action="append", default=None,
                        help="a pipeline spec (repeatable; default: every pipelines/*.toml)")
    parser.add_argument("--plan", action="append", default=[], metavar="NAME=PATH",
                        help="TensorRT plan of pipeline NAME's encoder (GPU)")
    args = parser.parse_args(argv)
    try:
        pipelines = [Pipeline.load(p) for p in args.pipeline] if args.pipeline else default_pipelines()
        plans = {}
        for item in args.plan:
            name, sep, path = item.partition("=")
            if not sep:
                raise ValueError(f"--plan takes NAME=PATH, got {item!r}")
            plans[name] = Path(path)
        out = assemble(args.output, pipelines, args.device, plans)
    except (ValueError, OSError) as e:  # OSError: a missing file, an output that is not a directory
        raise SystemExit(f"splade_triton.artifacts.repository: {e}") from None
    served = [p.name for p in pipelines if p.name not in skipped(pipelines)]
    print(f"assembled the {args.device} repository in {out}: {', '.join(served)}")


if __name__ == "__main__":
    main()
