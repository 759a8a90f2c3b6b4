"""python -m train: real training steps on SPLADE-tiny, resume, export and serve the result, bad data;
train.evaluate's metrics and pruning sweep on the tiny real-text fixture (tests/fixtures/stdlib_tiny,
built by python -m train.fixture --train 24 --heldout 8 --distractors 16)."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import MODEL_DIR, ROOT, default_pipeline, running
from train.data import DataError, read_examples, to_rows
from train.splade import TrainConfig, regularizer_weight, train

FIXTURE = ROOT / "tests" / "fixtures" / "stdlib_tiny"
TRAIN = FIXTURE / "train.jsonl"


def config(tmp: Path, **kw) -> TrainConfig:
    base = dict(model=str(MODEL_DIR), data=str(TRAIN), output=str(tmp / "out"), batch_size=8, max_steps=6,
                learning_rate=1e-4, max_seq_length=64, save_steps=2, regularizer_warmup_ratio=0.5, progress=False,
                device="cpu")
    return TrainConfig(**{**base, **kw})


def contrastive_loss(model_dir) -> float:
    import torch
    from sentence_transformers.sparse_encoder.losses import SparseMultipleNegativesRankingLoss
    from train.splade import build_encoder

    examples = read_examples(TRAIN)
    model = build_encoder(model_dir, 64, "cpu")
    with torch.no_grad():
        embeddings = [model.encode([e.query for e in examples], convert_to_tensor=True, convert_to_sparse_tensor=False),
                      model.encode([e.pos[0] for e in examples], convert_to_tensor=True, convert_to_sparse_tensor=False)]
        return float(SparseMultipleNegativesRankingLoss(model).compute_loss_from_embeddings(embeddings, None))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("train")
    cfg = config(tmp, max_steps=8)
    return cfg, train(cfg)


def test_loss_decreases_and_regularizer_follows_quadratic_warmup(trained):
    cfg, summary = trained
    history = summary["history"]
    assert [h["step"] for h in history] == list(range(1, 9))
    assert all(np.isfinite(h["loss"]) and h["base_loss"] >= 0 for h in history)
    # The contrastive loss over all the training pairs at once, before and after: it went down.
    assert contrastive_loss(cfg.output) < 0.8 * contrastive_loss(cfg.model)
    for h in history:  # the weight of step s is set when it begins, at global_step s - 1
        expected = regularizer_weight(h["step"] - 1, 8, cfg.document_regularizer_weight, 0.5)
        assert h["document_regularizer_weight"] == pytest.approx(expected)
        assert h["query_regularizer_weight"] == pytest.approx(
            regularizer_weight(h["step"] - 1, 8, cfg.query_regularizer_weight, 0.5))
    assert history[0]["document_regularizer_weight"] == 0.0
    assert history[-1]["document_regularizer_weight"] == cfg.document_regularizer_weight
    out = Path(cfg.output)
    # The input's layout (a masked-LM directory) plus sentence-transformers' files; checkpoints are gone.
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "modules.json",
                 "training_info.json"):
        assert (out / name).is_file(), name
    assert not (out.parent / "out.checkpoints").exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".out.")]  # no staging left


def test_trained_model_exports_and_serves_after_a_reload(trained, tmp_path):
    from export import export_onnx
    from client import SpladeClient
    from splade_triton.artifacts.repository import assemble
    from splade_triton.launcher.admin import Admin
    from train.evaluate import encode_texts
    from train.install import reload_pipeline
    from train.splade import build_encoder

    cfg, _ = trained
    exported = tmp_path / "exported"
    export_onnx.main(["--model", cfg.output, "--output", str(exported)])  # validates against transformers
    info = json.loads((exported / "export_info.json").read_text())
    assert info["kind"] == "splade" and info["validation"]

    text = "Return the absolute value of the argument."
    tuned = encode_texts(build_encoder(cfg.output, 512, "cpu"), [text])[0]
    stock = default_pipeline()
    repo = assemble(tmp_path / "model_repository", [stock])
    with running(repo, tmp_path / "server.log") as server, SpladeClient(f"http://{server.http_url}") as client:
        before = client.encode(text)
        assemble(repo, [dataclasses.replace(stock, model=exported)])  # what train.install does to the repository
        reloaded = reload_pipeline(Admin("127.0.0.1", server.http_port, server.admin_key), stock, repo)
        assert set(reloaded[:3]) == {"splade_tokenizer", "splade_encoder", "splade_sparsify"}  # steps first
        assert set(reloaded[3:]) == {"splade", "splade_embedding", "splade_windows"}
        after = client.encode(text)
    served = dict(zip(after.indices.tolist(), after.values.tolist()))
    expected = dict(zip(tuned.indices.tolist(), tuned.values.tolist()))
    assert set(served) == set(expected)
    assert max(abs(served[i] - expected[i]) for i in expected) < 1e-4
    assert dict(zip(before.indices.tolist(), before.values.tolist())) != served


def test_interrupted_run_resumes_from_its_checkpoint(tmp_path, monkeypatch):
    from sentence_transformers.sparse_encoder import SparseEncoderTrainer

    cfg = config(tmp_path)
    original = SparseEncoderTrainer.training_step

    def interrupted(self, *args, **kwargs):
        if self.state.global_step == 3:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(SparseEncoderTrainer, "training_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(cfg)
    checkpoints = tmp_path / "out.checkpoints"
    assert (checkpoints / "checkpoint-2").is_dir()
    assert not (tmp_path / "out").exists()  # nothing half-written

    # Other settings do not resume someone else's checkpoints.
    with pytest.raises(ValueError, match="another run"):
        train(dataclasses.replace(cfg, learning_rate=3e-4))

    monkeypatch.setattr(SparseEncoderTrainer, "training_step", original)
    summary = train(cfg)
    assert summary["resumed"] is True and summary["steps"] == 6
    assert [h["step"] for h in summary["history"]] == [3, 4, 5, 6]
    assert summary["history"][0]["document_regularizer_weight"] == pytest.approx(
        regularizer_weight(2, 6, cfg.document_regularizer_weight, 0.5))
    assert (tmp_path / "out" / "model.safetensors").is_file() and not checkpoints.exists()


@pytest.mark.parametrize("line, message", [
    ("{not json", "not valid JSON"),
    ('["query", "pos"]', "expected a JSON object"),
    ('{"pos": ["a"]}', "'query' must be a non-empty string"),
    ('{"query": "q"}', "no 'pos'"),
    ('{"query": "q", "pos": []}', "'pos' is empty"),
    ('{"query": "q", "pos": [1]}', "'pos' must be a list of strings"),
    ('{"query": "q", "pos": ["a"], "neg": [""]}', "'neg' holds an empty text"),
    ('{"query": "q", "pos": ["a"], "pos_scores": [1, 2]}', "'pos_scores' must be 1 finite number"),
    ('{"query": "q", "pos": ["a"], "positives": ["a"]}', "unknown field(s) positives"),
])
def test_bad_lines_are_named(tmp_path, line, message):
    data = tmp_path / "bad.jsonl"
    data.write_text('{"query": "fine", "pos": ["ok"]}\n\n' + line + "\n")
    with pytest.raises(DataError) as e:
        read_examples(data)
    assert str(e.value).startswith(f"{data}:3: ") and message in str(e.value)


def test_command_refuses_bad_data_and_writes_nothing(tmp_path):
    data = tmp_path / "bad.jsonl"
    data.write_bytes(b'{"query": "fine", "pos": ["ok"]}\n{"query": "q", "pos": ["\xff"]}\n')
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-m", "train", "--model", str(MODEL_DIR), "--data", str(data),
                             "--output", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert f"{data}:2: not UTF-8" in result.stderr
    assert list(tmp_path.iterdir()) == [data]


def test_rows_share_a_negative_count_and_carry_teacher_scores():
    from train.data import Example

    examples = [Example("q1", ["p1", "p2"], ["n1", "n2", "n3"], [3.0, 2.0], [1.0, 0.5, 0.2]),
                Example("q2", ["p3"], ["n4", "n5"], [4.0], [1.5, 0.1])]
    columns, n, distill = to_rows(examples, negatives=2)
    assert n == 2 and distill and len(columns["query"]) == 3
    assert set(columns) == {"query", "positive", "negative_1", "negative_2", "label"}
    assert columns["label"][2] in ([4.0, 1.5, 0.1], [4.0, 0.1, 1.5])
    columns, n, distill = to_rows(examples, negatives=5)  # 3: the most any has; q2's 2 cannot carry scores
    assert n == 3 and not distill and "label" not in columns
    # Fewer negatives than asked: drawn again; none: other examples' (never its own positives).
    columns, n, distill = to_rows(examples + [Example("q3", ["p4"], ["n6"]), Example("q4", ["n1"])], negatives=2)
    assert n == 2 and not distill and set(columns) == {"query", "positive", "negative_1", "negative_2"}
    assert [columns["negative_1"][3], columns["negative_2"][3]] == ["n6", "n6"]
    assert {columns["negative_1"][4], columns["negative_2"][4]} <= {"n2", "n3", "n4", "n5", "n6"}
    columns, n, _ = to_rows([Example("q1", ["p1"]), Example("q2", ["p2"])], negatives=3)
    assert n == 0 and set(columns) == {"query", "positive"}


def test_bm25_mining_adds_negatives_that_are_not_positives():
    from train.__main__ import read_corpus
    from train.bm25 import mine_negatives

    examples = read_examples(TRAIN)
    corpus = read_corpus(FIXTURE / "heldout" / "corpus.jsonl")
    mined = mine_negatives(examples, corpus, count=2, ranks=(2, 20))
    assert all(len(m.neg) <= 2 for m in mined) and sum(len(m.neg) == 2 for m in mined) > len(mined) // 2
    assert all(not set(m.neg) & set(m.pos) for m in mined)
    assert all(set(m.neg) <= set(corpus) for m in mined)
    assert [m.neg for m in mine_negatives(examples, corpus, count=2, ranks=(2, 20))] == [m.neg for m in mined]


def test_evaluation_and_pruning_sweep_on_the_tiny_fixture(tmp_path):
    from client.corpus import load_beir
    from train.evaluate import bm25_run, encode_dataset, prune, recommend, score, sweep, write_sparsify_defaults

    dataset = load_beir(FIXTURE / "heldout")
    encoded = encode_dataset(MODEL_DIR, dataset, 128, "cpu")
    full = score(dataset, encoded)
    assert set(full) >= {"nDCG@10", "MRR@10", "Recall@100", "query_terms", "doc_terms", "index_mib"}
    assert 0 < full["nDCG@10"] <= 1 and full["Recall@100"] == 1.0  # 48 documents: every one is retrieved
    assert full["doc_terms"] == pytest.approx(np.mean([len(v) for v in encoded.docs]))
    assert full["doc_terms"] > full["query_terms"] > 0
    assert 0 < bm25_run(dataset)["MRR@10"] <= 1

    pruned = prune(encoded.docs, top_k=5, min_weight=0.5)
    assert all(len(p) <= 5 and (p.values >= 0.5).all() for p in pruned)
    assert all(np.array_equal(p.indices, v.indices[:len(p)]) for p, v in zip(pruned, encoded.docs))

    rows = sweep(dataset, encoded, top_ks=(0, 4, 16), min_weights=(0.0, 0.5))
    assert len(rows) == 3 * 3 * 2
    unpruned = [r for r in rows if r["top_k"] == 0 and r["min_weight"] == 0]
    assert all(r["nDCG@10"] == pytest.approx(full["nDCG@10"]) for r in unpruned)
    pick = recommend(rows, tolerance=0.05)
    assert pick["side"] == "both" and pick["nDCG@10"] >= 0.95 * full["nDCG@10"]
    assert pick["index_mib"] <= full["index_mib"]

    from splade_triton.artifacts.repository import Pipeline

    spec = tmp_path / "splade.toml"
    shutil.copy(ROOT / "pipelines" / "splade.toml", spec)
    write_sparsify_defaults(spec, 16, 0.25)
    write_sparsify_defaults(spec, pick["top_k"], 0.5)  # a second write replaces, not appends
    parameters = Pipeline.load(spec).configs()["sparsify"].parameters
    assert parameters["top_k"].string_value == str(pick["top_k"])
    assert float(parameters["min_weight"].string_value) == 0.5
    assert spec.read_text().count("[sparsify.parameters]") == 1


BGE_M3_SRC = ROOT / "build" / "models" / "bge-m3-tiny-src"  # script/setup's tiny random BGE-M3


@pytest.fixture(scope="module")
def m3_data(tmp_path_factory):
    from train.__main__ import read_corpus
    from train.bm25 import mine_negatives

    if not (BGE_M3_SRC / "sparse_linear.pt").is_file():
        pytest.fail("the BGE-M3 fixture is not built: run script/setup")
    return mine_negatives(read_examples(TRAIN), read_corpus(FIXTURE / "heldout" / "corpus.jsonl"), 1, (2, 20))


def test_bge_m3_unified_finetuning_exports(m3_data, tmp_path):
    import torch
    from export import export_onnx
    from train.bge_m3 import M3Config, train_m3

    cfg = M3Config(model=str(BGE_M3_SRC), data=str(TRAIN), output=str(tmp_path / "m3"), max_steps=3,
                   batch_size=4, learning_rate=1e-4, query_max_length=32, passage_max_length=64, save_steps=2,
                   progress=False, device="cpu")
    summary = train_m3(cfg, m3_data)
    assert summary["steps"] == 3 and summary["negatives_per_query"] == 1 and len(summary["history"]) == 3
    out = Path(cfg.output)
    for name in ("config.json", "model.safetensors", "sparse_linear.pt", "colbert_linear.pt", "tokenizer.json"):
        assert (out / name).is_file(), name
    assert not (tmp_path / "m3.checkpoints").exists()
    before = torch.load(BGE_M3_SRC / "sparse_linear.pt")
    after = torch.load(out / "sparse_linear.pt")
    assert not torch.equal(before["weight"].float(), after["weight"].float())
    # The export takes it as BGE-M3 and validates it against FlagEmbedding.
    export_onnx.main(["--model", str(out), "--output", str(tmp_path / "exported"), "--max-length", "64"])
    assert json.loads((tmp_path / "exported" / "export_info.json").read_text())["kind"] == "bge_m3"


def test_bge_m3_frozen_encoder_trains_the_heads_only(m3_data, tmp_path):
    import torch
    from safetensors.torch import load_file
    from train.bge_m3 import M3Config, train_m3

    cfg = M3Config(model=str(BGE_M3_SRC), data=str(TRAIN), output=str(tmp_path / "m3"), max_steps=2,
                   batch_size=4, learning_rate=1e-3, query_max_length=32, passage_max_length=64,
                   freeze_encoder=True, self_distill=False, progress=False, device="cpu")
    train_m3(cfg, m3_data)
    source, tuned = load_file(BGE_M3_SRC / "model.safetensors"), load_file(Path(cfg.output) / "model.safetensors")
    # Every encoder weight is the source's (FlagEmbedding also saves the unused pooler transformers adds).
    assert set(source) <= set(tuned) and all(torch.equal(source[k], tuned[k]) for k in source)
    assert not torch.equal(torch.load(BGE_M3_SRC / "sparse_linear.pt")["weight"].float(),
                           torch.load(Path(cfg.output) / "sparse_linear.pt")["weight"].float())
