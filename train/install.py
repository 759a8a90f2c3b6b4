"""Install a trained model into a pipeline: export, assemble, reload that pipeline only.

    python -m train.install --model OUT --pipeline splade [--server 127.0.0.1:8000]

1. exports OUT (``export.export_onnx``: validated against transformers) to the model
   directory that ``pipelines/<pipeline>.toml`` names (replaced at once; the stock
   export comes back with ``python -m export.export_onnx --model models/splade-tiny``);
2. assembles the repository (default ``model_repository``) from pipelines/*.toml;
3. with ``--server HOST:PORT`` (HTTP; the admin key from SPLADE_ADMIN_KEY), reloads the
   pipeline's models through Triton's model-repository API, each with the config just
   assembled (a changed spec setting is served at once): the launcher serves in explicit
   model-control mode, Triton swaps each model in once the new instance is ready, and every
   other pipeline keeps running. ``--repository`` must be the repository that server serves.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from google.protobuf import json_format

from export import export_onnx
from splade_triton.artifacts.repository import PIPELINES, Pipeline
from splade_triton.artifacts.shapes import read_config
from splade_triton.launcher.admin import ADMIN_KEY_ENV, Admin

__all__ = ["install", "main", "reload_pipeline"]


def reload_pipeline(admin: Admin, pipeline: Pipeline, repository: Path) -> list[str]:
    """Load each of ``pipeline``'s models again, composing steps first, the ensembles last.

    Each load is given the config just assembled in ``repository`` (its config.pbtxt): that
    makes Triton load the model afresh (a plain load of a loaded model may be taken as
    nothing to do) and with the new settings (the served config would keep the old ones)."""
    steps = pipeline.kind_spec()["steps"]
    configs = {}
    for step in steps:
        name = pipeline.model_name(step)
        path = Path(repository) / name / "config.pbtxt"
        if not path.is_file():
            raise SystemExit(f"train.install: {path} not found: is {repository} the repository the server serves?")
        configs[name] = json_format.MessageToDict(read_config(path), preserving_proto_field_name=True)
    composing = [n for n, c in configs.items() if c.get("platform") != "ensemble"]
    ensembles = [n for n in configs if n not in composing]
    for name in composing + ensembles:
        admin.load(name, configs[name])
    return composing + ensembles


def install(model: Path, pipeline_name: str, repository: Path, server: str | None = None) -> Path:
    spec = PIPELINES / f"{pipeline_name}.toml"
    if not spec.is_file():
        raise SystemExit(f"train.install: no pipeline spec {spec}; add one (kind, model) or name another")
    pipeline = Pipeline.load(spec)
    if pipeline.kind != "splade":
        raise SystemExit(f"train.install: pipeline '{pipeline_name}' is of kind {pipeline.kind}; "
                         "this installs SPLADE models")
    export_onnx.main(["--model", str(model), "--output", str(pipeline.model), "--repository", str(repository)])
    if server:
        key = os.environ.get(ADMIN_KEY_ENV)
        if not key:
            raise SystemExit(f"train.install: set {ADMIN_KEY_ENV} to the server's admin key to reload it")
        host, _, port = server.rpartition(":")
        reloaded = reload_pipeline(Admin(host or "127.0.0.1", int(port), key), pipeline, repository)
        print(f"reloaded {', '.join(reloaded)} on {server}; other pipelines untouched")
    return pipeline.model


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m train.install", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="a trained directory (python -m train --output)")
    parser.add_argument("--pipeline", default="splade", help="pipelines/<name>.toml to serve it (default splade)")
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--server", default=None, help="HOST:HTTP_PORT of a running server to reload the pipeline on")
    args = parser.parse_args(argv)
    install(args.model, args.pipeline, args.repository, args.server)


if __name__ == "__main__":
    main()
