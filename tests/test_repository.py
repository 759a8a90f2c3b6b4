"""Repository assembly: templates + pipeline specs -> a self-contained repository holding several pipelines."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

from splade_triton.artifacts.repository import Pipeline, assemble, pipeline_configs
from splade_triton.artifacts.shapes import read_config
from tests import triton
from tests.conftest import ROOT, default_pipeline, running

PYTHON_STEPS = ("tokenizer", "encoder", "sparsify")


def served_names(repository: Path) -> set[str]:
    return {p.parent.name for p in repository.glob("*/config.pbtxt")}


def test_the_default_repository_serves_each_step_under_the_pipelines_name(repository):
    assert served_names(repository) == {"splade", "splade_embedding", "splade_windows", "splade_tokenizer", "splade_encoder", "splade_sparsify"}
    ensemble = read_config(repository / "splade" / "config.pbtxt")
    assert [s.model_name for s in ensemble.ensemble_scheduling.step] == ["splade_tokenizer", "splade_encoder", "splade_sparsify"]
    assert [o.name for o in ensemble.output] == ["indices", "values", "tokens", "num_tokens", "truncated", "windows"]
    assert [o.name for o in read_config(repository / "splade_embedding" / "config.pbtxt").output] == [
        "embedding", "num_tokens", "truncated", "windows"]
    for step in PYTHON_STEPS:
        version = repository / f"splade_{step}" / "1"
        # The serving code travels with the model: nothing of the project needs installing.
        for module in (ROOT / "splade_triton" / "serving").glob("*.py"):
            assert (version / "splade_triton" / "serving" / module.name).read_bytes() == module.read_bytes()
    assert (repository / "splade" / "1" / ".keep").is_file()  # object stores drop empty folders


def test_spec_settings_reach_the_served_config(tmp_path):
    pipeline = (default_pipeline()
                .with_step("tokenizer", parameters={"max_length": 128})
                .with_step("encoder", config="instance_group [ { count: 2, kind: KIND_CPU } ] "
                                             "dynamic_batching { max_queue_delay_microseconds: 500 }"))
    configs = pipeline_configs(pipeline)
    assert configs["tokenizer"].parameters["max_length"].string_value == "128"
    assert configs["tokenizer"].parameters["max_text_bytes"].string_value == "65536"  # the template's others stay
    encoder = configs["encoder"]
    assert [(g.count, g.kind) for g in encoder.instance_group] == [(2, encoder.instance_group[0].KIND_CPU)]  # a list replaces
    assert encoder.dynamic_batching.max_queue_delay_microseconds == 500
    assert encoder.dynamic_batching.default_queue_policy.max_queue_size == 128  # a message merges
    written = read_config(assemble(tmp_path / "r", [pipeline]) / "splade_encoder" / "config.pbtxt")
    assert written == encoder


def test_a_spec_file_is_read_and_bad_specs_are_refused_with_their_reason(tmp_path):
    spec = tmp_path / "docs_side.toml"
    spec.write_text('kind = "splade"\nmodel = "build/models/splade-tiny"\n[tokenizer.parameters]\nmax_length = 256\n')
    pipeline = Pipeline.load(spec)
    assert (pipeline.name, pipeline.model) == ("docs_side", ROOT / "build" / "models" / "splade-tiny")
    assert pipeline.configs()["tokenizer"].parameters["max_length"].string_value == "256"
    assert pipeline.model_name("encoder") == "docs_side_encoder" and pipeline.model_name("ensemble") == "docs_side"

    cases = {
        'model = "x"\n': "'kind' (a folder of templates/) is required",
        'kind = "nope"\n': "unknown kind 'nope'",
        'kind = "splade"\n[decoder.parameters]\nx = 1\n': "unknown step(s) ['decoder']",
        'kind = "splade"\n[encoder]\nsettings = 1\n': "[encoder] may set only",
        'kind = "splade"\n[encoder]\nconfig = "instance_group [ { count: } ]"\n': "[encoder] config",
        'kind = "splade"\nmodel = \n': "pipeline spec",
    }
    for text, message in cases.items():
        spec.write_text(text)
        with pytest.raises(ValueError, match=None) as info:
            Pipeline.load(spec)
        assert message in str(info.value), (text, str(info.value))


def test_a_failed_assembly_leaves_the_previous_repository_as_it_was(tmp_path):
    output = assemble(tmp_path / "model_repository", [default_pipeline()])
    before = sorted(str(p.relative_to(output)) for p in output.rglob("*"))
    broken = Pipeline("broken", "splade", tmp_path / "no-such-export")
    with pytest.raises(FileNotFoundError, match="no-such-export/tokenizer.json is missing"):
        assemble(output, [default_pipeline(), broken])
    assert sorted(str(p.relative_to(output)) for p in output.rglob("*")) == before
    assert [p.name for p in tmp_path.iterdir()] == ["model_repository"]  # no staging folder left behind
    with pytest.raises(ValueError, match="same model name"):
        assemble(output, [default_pipeline(), default_pipeline()])


def single_token_words(count: int) -> list[str]:
    tokenizer = Tokenizer.from_file(str(default_pipeline().model / "tokenizer.json"))
    words = [w for w in "the capital of france is paris and the river seine runs through the city which has many old "
             "bridges museums gardens streets cafes churches towers and markets for people who live there".split()]
    assert all(len(tokenizer.encode(w, add_special_tokens=False).ids) == 1 for w in words)
    return words[:count]


def test_two_pipelines_side_by_side_in_one_repository(tmp_path):
    """`splade` and a short-query variant with its own settings, one tritonserver."""
    short = default_pipeline().renamed("splade_short").with_step("tokenizer", parameters={"max_length": 10})
    repository = assemble(tmp_path / "model_repository", [default_pipeline(), short])
    assert {"splade", "splade_short", "splade_short_encoder", "splade_encoder"} <= served_names(repository)
    words = single_token_words(30)
    with running(repository, tmp_path / "server.log") as srv:
        for protocol in ("http", "grpc"):
            c = triton.client(protocol, srv)
            long_text = " ".join(words)
            full = triton.encode(protocol, c, [long_text], outputs=("indices", "values"))
            # max_length 10: [CLS] + 8 words + [SEP], exactly what `splade` gives for the first 8 words.
            cut = triton.encode(protocol, c, [long_text], outputs=("indices", "values"), model="splade_short")
            first8 = triton.encode(protocol, c, [" ".join(words[:8])], outputs=("indices", "values"))
            for name in ("indices", "values"):
                np.testing.assert_allclose(cut[name], first8[name], atol=1e-6)
            assert full["indices"].shape[1] > cut["indices"].shape[1]


def test_the_assembled_repository_serves_from_a_copy_with_only_the_locked_runtime(tmp_path, server):
    """A stock tritonserver with the runtime packages of requirements/runtime.txt, and this project not installed."""
    runtime = tmp_path / "runtime-venv"
    subprocess.run([sys.executable, "-m", "venv", str(runtime)], check=True)
    subprocess.run([runtime / "bin" / "pip", "install", "--quiet", "--require-hashes", "--no-deps", "--only-binary", ":all:",
                    "-r", ROOT / "requirements" / "runtime.txt"], check=True, capture_output=True)
    probe = subprocess.run([runtime / "bin" / "python", "-c", "import splade_triton"], cwd=tmp_path, capture_output=True)
    assert probe.returncode != 0, "the runtime environment must not see the project"

    pipeline = default_pipeline()
    for step in PYTHON_STEPS:
        # Triton's own setting for a model's Python environment.
        pipeline = pipeline.with_step(step, parameters={"EXECUTION_ENV_PATH": str(runtime)})
    built = assemble(tmp_path / "built", [pipeline])
    copy = tmp_path / "copied" / "model_repository"
    shutil.copytree(built, copy)  # as S3 or KServe's storage initializer would: plain files
    shutil.rmtree(built)
    texts = ["what is the capital of france", "", "naïve café — 東京"]
    with running(copy, tmp_path / "server.log") as srv:
        loaded_from = set()
        for stub in srv.stubs():
            maps = Path(f"/proc/{stub.pid}/maps").read_text()
            loaded_from |= {line.split()[-1].split("/lib/python")[0] for line in maps.splitlines() if "_multiarray_umath" in line}
        assert loaded_from == {str(runtime)}, loaded_from
        triton.assert_serves_alike(srv, server, texts)


def test_export_can_install_into_a_repository_through_the_pipeline_specs(tmp_path, capsys):
    from export.export_onnx import install

    install(default_pipeline().model, tmp_path / "model_repository")
    assert "pipeline(s) splade serve" in capsys.readouterr().out
    assert "splade_encoder" in served_names(tmp_path / "model_repository")
    with pytest.raises(SystemExit, match="no spec in pipelines/ names"):
        install(tmp_path / "elsewhere", tmp_path / "other")
    assert not (tmp_path / "other").exists()
