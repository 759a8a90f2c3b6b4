"""BGE-M3 at build time: the published checkpoint layout, a fixture in it, the ONNX graph, its validation.

A BGE-M3 checkpoint (FlagEmbedding's M3) is a directory holding an
XLMRobertaModel (config.json + model.safetensors or pytorch_model.bin), the
two heads ``sparse_linear.pt`` (state dict of Linear(hidden, 1)) and
``colbert_linear.pt`` (Linear(hidden, hidden)), both saved in fp16 in the
published one, and a SentencePiece Unigram tokenizer (tokenizer.json).

The graph (``graph_module``) takes ``input_ids`` and ``attention_mask`` (int64
[batch, seq]) and returns, from the last hidden state h:

- ``dense`` float32 [batch, hidden]: h[:, 0] L2-normalised;
- ``token_weights`` float32 [batch, seq]: relu(sparse_linear(h)) per token,
  0 at padding; the lexical weights are their max per token id, with the ids
  of <s>, </s>, <pad>, <unk> dropped (done after the graph, never as a
  vocabulary-wide tensor);
- ``colbert`` float32 [batch, seq - 1, hidden]: colbert_linear(h[:, 1:])
  masked, then L2-normalised (zero vectors at padding), FlagEmbedding's order.

``validate`` runs the exported graph against FlagEmbedding's own
BGEM3FlagModel on the same directory. ``python -m splade_triton.artifacts.bge_m3
fixture --output DIR`` writes a random BGE-M3-shaped checkpoint (no BGE-M3
weights are reachable here) with a small Unigram tokenizer trained on the
multilingual text below; ``--full-size`` gives XLM-R-large's shapes (for
benchmarks and the external-data path; the tokenizer stays small).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from splade_triton.artifacts.onnx_graph import ExportError
from splade_triton.artifacts.reference import CheckpointError
from splade_triton.artifacts.texts import VARIED_TEXTS

__all__ = ["HEAD_FILES", "INPUTS", "OPSET", "OUTPUTS", "EXTERNAL_DATA_ABOVE", "VALIDATION_TEXTS", "build_fixture",
           "export", "graph_module", "is_layout", "lexical_dicts", "load", "long_text", "special_ids",
           "validate", "validate_long"]

INPUTS = ("input_ids", "attention_mask")
OUTPUTS = ("dense", "token_weights", "colbert")
HEAD_FILES = ("sparse_linear.pt", "colbert_linear.pt")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
# Opset 23 exports each layer's attention as one ONNX Attention op instead of
# MatMul/Softmax/MatMul: OpenVINO runs it as its fused scaled-dot-product attention,
# whose memory grows linearly with the length (an 8192-token document would
# otherwise hold a [heads, 8192, 8192] score tensor per layer). TensorRT parses the
# op from 10.14; older engines need --opset 18.
OPSET = 23
# protobuf refuses messages over 2 GiB; above this the initializers go to model.onnx.data.
EXTERNAL_DATA_ABOVE = int(1.5 * 2**30)

# The fixture tokenizer's training text: our own sentences, several scripts.
CORPUS = [
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Search engines rank documents by how well their terms match the query.",
    "Learned sparse retrieval assigns a weight to every vocabulary term of a passage.",
    "Dense vectors capture meaning, sparse weights capture exact words, and late interaction keeps both.",
    "What is the capital of France, and how many people live in Paris today?",
    "How do vaccines train the immune system to recognise a virus?",
    "Python list comprehensions are faster than explicit loops for simple transformations.",
    "The museum opens at nine in the morning and closes at six in the evening.",
    "Crème brûlée, naïve café, São Paulo, Zürich, Ærøskøbing and Kraków are full of accents.",
    "El niño comió una manzana y bebió zumo de naranja en la mañana soleada.",
    "Le garçon a acheté du pain frais à la boulangerie près de l'église.",
    "Die Straße war nass, weil es die ganze Nacht über geregnet hatte.",
    "Ça coûte très cher à Genève, où les hôtels sont souvent complets en été.",
    "A nação brasileira celebra o carnaval com música, dança e alegria.",
    "Türkçe öğrenmek için her gün biraz pratik yapmak gerekir.",
    "Příliš žluťoučký kůň úpěl ďábelské ódy na louce.",
    "Zażółć gęślą jaźń, powiedział nauczyciel języka polskiego.",
    "Москва — столица России, крупнейший город страны и Европы.",
    "Быстрая коричневая лиса прыгает через ленивую собаку у реки.",
    "Поисковые системы ранжируют документы по совпадению слов запроса.",
    "Київ є столицею України, місто стоїть на березі Дніпра.",
    "Българският език използва кирилицата от девети век насам.",
    "東京は日本の首都で、世界で最も人口の多い都市圏の一つです。",
    "北京是中国的首都，也是一座有三千多年历史的古城。",
    "机器学习模型可以把文本转换成向量，用于语义检索。",
    "我喜欢在周末去公园散步，看看花草和湖水。",
    "今日は天気が良いので、友達と一緒に公園でお弁当を食べました。",
    "検索エンジンは文書とクエリの一致度に基づいて順位を付けます。",
    "서울은 대한민국의 수도이며 한강이 도시를 가로질러 흐릅니다.",
    "한국어 문장을 토큰으로 나누는 것은 생각보다 어렵습니다.",
    "القاهرة هي عاصمة مصر وأكبر مدنها على ضفاف نهر النيل.",
    "تقوم محركات البحث بترتيب المستندات حسب تطابقها مع الاستعلام.",
    "اللغة العربية تكتب من اليمين إلى اليسار وتضم ثمانية وعشرين حرفا.",
    "תל אביב היא עיר על חוף הים התיכון.",
    "Η Αθήνα είναι η πρωτεύουσα της Ελλάδας και έχει μακρά ιστορία.",
    "नई दिल्ली भारत की राजधानी है और यह एक बड़ा शहर है।",
    "กรุงเทพมหานครเป็นเมืองหลวงของประเทศไทย",
    "Hà Nội là thủ đô của Việt Nam, nổi tiếng với phở và hồ Hoàn Kiếm.",
    "I love pizza 🍕🔥 and 👩‍💻 coding! ✨ Let's celebrate 🎉🎂 tonight 🌙.",
    "Weather today: ☀️ then 🌧️, tomorrow ❄️; don't forget your ☂️!",
    "def encode(texts):\n    return [tokenizer(t) for t in texts if t]  # skip empty",
    "SELECT id, name FROM users WHERE email LIKE '%@example.com' ORDER BY id;",
    "<html><body><h1 class=\"title\">Hello &amp; welcome</h1></body></html>",
    "e = mc², ∑ xᵢ ≤ ∞, π ≈ 3.14159, √2 ≈ 1.41421, 10% of 250 is 25.",
    "Order #12345 shipped on 2024-03-15 at 14:30 UTC, tracking code ZX9-881-Q.",
    "ALL CAPS SHOUTING ABOUT THE STOCK MARKET CRASH OF 1929!!!",
    "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris.",
    "It was named after the engineer Gustave Eiffel, whose company designed and built it.",
    "Retrieval-augmented generation combines a search step with a language model.",
    "Hybrid retrieval mixes lexical, dense and multi-vector scores with fixed weights.",
    "Ｆｕｌｌｗｉｄｔｈ letters and ① circled digits are normalised by NFKC.",
    "word word word repeated repeated repeated tokens tokens tokens",
]


def is_layout(model: str | Path) -> bool:
    """Whether ``model`` is a directory in BGE-M3's published layout (either head file beside the weights).

    Either head is enough to take it as BGE-M3: a directory missing the other
    is then refused by ``load`` with a message naming it, rather than exported
    as something else.
    """
    path = Path(model)
    return path.is_dir() and any((path / name).is_file() for name in HEAD_FILES)


def special_ids(tokenizer) -> dict[str, int]:
    """Ids of <s>, </s>, <pad>, <unk> as the tokenizer declares them (FlagEmbedding's dropped ids)."""
    ids = {"cls": tokenizer.cls_token_id, "eos": tokenizer.eos_token_id,
           "pad": tokenizer.pad_token_id, "unk": tokenizer.unk_token_id}
    undeclared = [k for k, v in ids.items() if v is None]
    if undeclared:
        raise CheckpointError(f"the tokenizer does not declare its {', '.join(undeclared)} token(s)")
    return {k: int(v) for k, v in ids.items()}


def _load_head(path: Path, out_features: int, hidden: int):
    import torch

    name = path.name
    if not path.is_file():
        raise CheckpointError(
            f"{path.parent} is missing {name}: a BGE-M3 checkpoint has both {' and '.join(HEAD_FILES)} beside its "
            f"weights (FlagEmbedding would initialise a missing head randomly and produce random vectors)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many kinds for a corrupt or non-tensor file
        raise CheckpointError(f"{path} cannot be read as a state dict: {type(e).__name__}: {e}") from None
    expected = {"weight": (out_features, hidden), "bias": (out_features,)}
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, not the state dict of a Linear layer")
    got = {k: tuple(v.shape) for k, v in state.items() if hasattr(v, "shape")}
    if got != expected or set(state) != set(expected):
        raise CheckpointError(
            f"{name} does not fit this model: expected the state dict of Linear({hidden}, {out_features}) "
            f"(weight {list(expected['weight'])}, bias {list(expected['bias'])}), got "
            + (", ".join(f"{k} {list(v)}" for k, v in got.items()) or "no tensors"))
    linear = torch.nn.Linear(hidden, out_features)
    linear.load_state_dict({k: v.float() for k, v in state.items()})
    return linear.eval()


def load(model: str | Path):
    """(tokenizer, XLMRobertaModel in eval mode fp32, sparse_linear, colbert_linear) from a BGE-M3 directory.

    Raises CheckpointError when the encoder lacks trained weights (naming
    them; the pooler, which BGE-M3 does not use, is not loaded), a head file
    is missing, unreadable or of the wrong shape, or the tokenizer does not
    fit the model.
    """
    from transformers import AutoConfig, AutoTokenizer, XLMRobertaModel

    model = Path(model)
    if not any((model / name).is_file() for name in WEIGHT_FILES):
        raise CheckpointError(f"{model} has no encoder weights ({' or '.join(WEIGHT_FILES)})")
    config = AutoConfig.from_pretrained(model)
    if config.model_type != "xlm-roberta":
        raise CheckpointError(f"{model} is a {config.model_type!r} model; BGE-M3 is an XLM-RoBERTa (xlm-roberta) encoder")
    encoder, info = XLMRobertaModel.from_pretrained(model, add_pooling_layer=False, dtype="float32",
                                                     output_loading_info=True)
    missing = sorted(info.get("missing_keys", ()))
    mismatched = sorted(str(k[0] if isinstance(k, tuple) else k) for k in info.get("mismatched_keys", ()))
    if missing or mismatched:
        raise CheckpointError(
            f"{model} lacks trained encoder weights: "
            + "; ".join(part for part in (f"missing {', '.join(missing)}" if missing else "",
                                          f"of another shape {', '.join(mismatched)}" if mismatched else "") if part)
            + ". transformers would initialise them randomly and the export would produce random vectors")
    hidden = int(config.hidden_size)
    sparse_linear = _load_head(model / "sparse_linear.pt", 1, hidden)
    colbert_linear = _load_head(model / "colbert_linear.pt", hidden, hidden)
    tokenizer = AutoTokenizer.from_pretrained(model, use_fast=True)
    if len(tokenizer) > config.vocab_size:
        raise CheckpointError(
            f"the tokenizer has {len(tokenizer)} tokens but the model's embeddings have {config.vocab_size} "
            f"(config.vocab_size): the tokenizer is not this model's")
    special_ids(tokenizer)
    return tokenizer, encoder.eval(), sparse_linear, colbert_linear


def graph_module(encoder, sparse_linear, colbert_linear):
    """The exported computation: (dense, token_weights, colbert) from input_ids and attention_mask."""
    import torch
    import torch.nn.functional as F

    class BgeM3(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder, self.sparse_linear, self.colbert_linear = encoder, sparse_linear, colbert_linear

        def forward(self, input_ids, attention_mask):
            h = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            mask = attention_mask.to(h.dtype)
            dense = F.normalize(h[:, 0], dim=-1)
            token_weights = torch.relu(self.sparse_linear(h)).squeeze(-1) * mask
            colbert = F.normalize(self.colbert_linear(h[:, 1:]) * mask[:, 1:, None], dim=-1)
            return dense, token_weights, colbert

    return BgeM3().eval()


def parameter_bytes(*modules) -> int:
    return sum(p.numel() * p.element_size() for m in modules for p in m.parameters())


def export(encoder, sparse_linear, colbert_linear, path: Path, opset: int, external_data: bool) -> None:
    """Trace the graph to ``path`` (dynamic batch and sequence); external_data: initializers in ``path``.data."""
    import torch

    module = graph_module(encoder, sparse_linear, colbert_linear)
    example = (torch.ones(2, 16, dtype=torch.int64), torch.ones(2, 16, dtype=torch.int64))
    batch, seq = torch.export.Dim("batch", min=1), torch.export.Dim("seq", min=2)
    with torch.inference_mode():
        program = torch.onnx.export(
            module, example, dynamo=True,
            input_names=list(INPUTS), output_names=list(OUTPUTS), opset_version=opset,
            dynamic_shapes={"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}},
            optimize=True,
        )
    program.save(str(path), external_data=external_data)


VALIDATION_TEXTS = [
    *VARIED_TEXTS,
    "東京 東京 東京 東京 東京 東京",
    "Москва Москва Москва, столица столица",
    "🍕🍕🍕🍕 🔥🔥",
    "an unseen script: ሰላም ዓለም ᚠᚢᚦᚨᚱ",
    "<mask> is kept, <unk> and </s> are dropped",
    "Le garçon a acheté du pain frais à la boulangerie près de l'église, et l'église était fermée.",
]


def lexical_dicts(input_ids, token_weights, specials: dict[str, int]) -> list[dict[str, float]]:
    """FlagEmbedding's form of the lexical weights, {str(token id): weight} per text, from the graph's
    token_weights through the serving reduction (splade_triton.serving.bge_m3.lexical_weights)."""
    from splade_triton.serving.bge_m3 import SPECIAL_TOKENS, lexical_weights

    batch = lexical_weights(np.asarray(input_ids), np.asarray(token_weights), [specials[k] for k in SPECIAL_TOKENS])
    return [{str(int(i)): float(w) for i, w in zip(ids, weights)} for ids, weights in batch.rows()]


def _onnx_outputs(session, tokenizer, texts, max_length: int, batch: int):
    """Per text (lexical weights, attention_mask, token_weights, colbert, dense, length) from the
    graph, run in padded batches of mixed lengths."""
    rows = []
    specials = special_ids(tokenizer)
    for i in range(0, len(texts), batch):
        enc = tokenizer(list(texts[i : i + batch]), padding=True, truncation=True, max_length=max_length,
                        return_tensors="np")
        feeds = {name: enc[name].astype(np.int64) for name in INPUTS}
        dense, weights, colbert = session.run(list(OUTPUTS), feeds)
        lexical = lexical_dicts(feeds["input_ids"], weights, specials)
        for j in range(len(dense)):
            n = int(feeds["attention_mask"][j].sum())
            rows.append((lexical[j], feeds["attention_mask"][j], weights[j], colbert[j], dense[j], n))
    return rows


def _session(onnx_path: Path, runtime: str):
    """The graph on ``runtime`` as the encoder serves it (fp32), checked for the expected signature."""
    from splade_triton.serving.runtime import open_session

    session = open_session(str(onnx_path), runtime, "fp32", 0, False, "all")
    names = ([i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()])
    if names != (list(INPUTS), list(OUTPUTS)):
        raise ExportError(f"unexpected graph signature: inputs {names[0]}, outputs {names[1]}")
    return session


def _compare(rows, expected, max_length: int, tolerance: float, what: str) -> dict:
    """The graph's rows (``_onnx_outputs``) against FlagEmbedding's ``expected``; ExportError on any mismatch."""
    dense_diff = colbert_diff = lexical_diff = 0.0
    key_mismatches, padding_nonzero, truncated, terms, problems = 0, 0, 0, 0, []
    for i, (got, mask, weights, colbert, dense, n) in enumerate(rows):
        truncated += n == max_length
        dense_diff = max(dense_diff, float(np.abs(dense - expected["dense_vecs"][i]).max()))
        ref_colbert = expected["colbert_vecs"][i]
        if ref_colbert.shape != (n - 1, colbert.shape[-1]):
            problems.append(f"text {i}: {n - 1} colbert vectors expected shape {ref_colbert.shape}")
            continue
        colbert_diff = max(colbert_diff, float(np.abs(colbert[: n - 1] - ref_colbert).max(initial=0.0)))
        padding_nonzero += int(np.count_nonzero(colbert[n - 1 :])) + int(np.count_nonzero(weights[mask == 0]))
        ref = expected["lexical_weights"][i]
        terms += len(ref)
        if set(got) != set(ref):
            key_mismatches += 1
            problems.append(f"text {i}: lexical ids differ: only ours {sorted(set(got) - set(ref))[:5]}, "
                            f"only FlagEmbedding's {sorted(set(ref) - set(got))[:5]}")
        for k in set(got) & set(ref):
            lexical_diff = max(lexical_diff, abs(got[k] - float(ref[k])))

    report = {"reference": "FlagEmbedding BGEM3FlagModel (fp32, cpu)", "texts": len(rows),
              "truncated_texts": int(truncated), "max_length": max_length, "tolerance": tolerance,
              "dense_max_abs_diff": dense_diff, "colbert_max_abs_diff": colbert_diff,
              "lexical_max_abs_diff": lexical_diff, "lexical_terms": terms, "lexical_key_mismatches": key_mismatches,
              "padding_nonzero": padding_nonzero}
    print(f"validation of {what} against FlagEmbedding on {len(rows)} texts ({truncated} truncated at {max_length}): "
          f"max abs diff dense {dense_diff:.3g}, colbert {colbert_diff:.3g}, lexical {lexical_diff:.3g} "
          f"(tolerance {tolerance:g}); lexical id mismatches {key_mismatches}; non-zero padding outputs {padding_nonzero}")
    worst = max(dense_diff, colbert_diff, lexical_diff)
    if worst > tolerance or key_mismatches or padding_nonzero or problems:
        raise ExportError(
            f"ONNX export ({what}) does not match FlagEmbedding: max abs diff {worst:.3g} (tolerance {tolerance:g}), "
            f"{key_mismatches} texts with other lexical ids, {padding_nonzero} non-zero outputs at padding"
            + (f"; {'; '.join(problems[:3])}" if problems else ""))
    return report


def validate(onnx_path: Path, model_dir: Path, tokenizer, texts, max_length: int, tolerance: float,
             batch: int = 7, runtime: str = "onnxruntime", reference=None) -> dict:
    """Compare the graph on ``runtime`` with FlagEmbedding's BGEM3FlagModel on the same directory;
    raise ExportError on any mismatch.

    dense and colbert: max abs difference; lexical weights: the same ids per
    text and the max abs difference of their weights. The graph runs in padded
    batches of mixed lengths (and FlagEmbedding in its own length-sorted ones),
    so padding must not change any output; the graph's outputs at padding
    (token_weights, colbert vectors) must be exactly 0. ``reference``: a loaded
    BGEM3FlagModel to reuse.
    """
    from FlagEmbedding import BGEM3FlagModel

    session = _session(onnx_path, runtime)
    reference = reference or BGEM3FlagModel(str(model_dir), use_fp16=False, devices="cpu")
    expected = reference.encode(list(texts), batch_size=4, max_length=max_length,
                                return_dense=True, return_sparse=True, return_colbert_vecs=True)
    rows = _onnx_outputs(session, tokenizer, texts, max_length, batch)
    return _compare(rows, expected, max_length, tolerance, f"the graph on {runtime}")


def long_text(tokenizer, length: int) -> str:
    """A text of varied words that the tokenizer cuts at ``length`` tokens (more than that uncut)."""
    parts, tokens = [], 0
    while tokens <= length:
        for text in VARIED_TEXTS:
            parts.append(text)
            tokens += len(tokenizer(text, add_special_tokens=False)["input_ids"])
    return " ".join(parts)


def validate_long(onnx_path: Path, model_dir: Path, tokenizer, length: int, tolerance: float,
                  runtime: str = "openvino", reference=None) -> dict:
    """One document of the model's full ``length`` tokens, alone, on the runtime that serves long
    documents, against FlagEmbedding at that length: attention at every distance the model allows."""
    from FlagEmbedding import BGEM3FlagModel

    session = _session(onnx_path, runtime)
    reference = reference or BGEM3FlagModel(str(model_dir), use_fp16=False, devices="cpu")
    text = [long_text(tokenizer, length)]
    expected = reference.encode(text, batch_size=1, max_length=length,
                                return_dense=True, return_sparse=True, return_colbert_vecs=True)
    rows = _onnx_outputs(session, tokenizer, text, length, 1)
    if rows[0][-1] != length:
        raise ExportError(f"the long validation text has {rows[0][-1]} tokens, not {length}")
    return _compare(rows, expected, length, tolerance, f"a {length}-token document on {runtime}")


# --- the fixture --------------------------------------------------------------------------------

FULL_SIZE = dict(hidden=1024, layers=24, heads=16, intermediate=4096, positions=8194, vocab=250002)


def train_tokenizer(vocab_size: int = 4000, max_length: int = 512):
    """A SentencePiece-style Unigram tokenizer trained on CORPUS, wrapped as XLM-R's fast tokenizer.

    Ids as XLM-R's: <s>=0 <pad>=1 </s>=2 <unk>=3, then the pieces, <mask> last.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import XLMRobertaTokenizerFast

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
                                      unk_token="<unk>", show_progress=False)
    tok.train_from_iterator(CORPUS, trainer=trainer)
    tok.add_special_tokens(["<mask>"])
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", 0), ("</s>", 2)])
    assert [tok.token_to_id(t) for t in ("<s>", "<pad>", "</s>", "<unk>")] == [0, 1, 2, 3]
    return XLMRobertaTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", sep_token="</s>", cls_token="<s>",
        unk_token="<unk>", pad_token="<pad>", mask_token="<mask>", model_max_length=max_length)


def build_fixture(output: Path, hidden: int = 32, layers: int = 2, heads: int = 2, intermediate: int | None = None,
                  positions: int = 514, vocab: int | None = None, seed: int = 0) -> Path:
    """Write a random BGE-M3-shaped checkpoint in the published layout to ``output`` (all at once)."""
    import torch
    from transformers import XLMRobertaConfig, XLMRobertaModel

    from splade_triton.artifacts.files import staged_directory

    torch.manual_seed(seed)
    tokenizer = train_tokenizer(max_length=positions - 2)
    vocab = vocab or len(tokenizer)
    if vocab < len(tokenizer):
        raise SystemExit(f"--vocab {vocab} is smaller than the tokenizer's {len(tokenizer)} tokens")
    config = XLMRobertaConfig(
        vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=intermediate or 4 * hidden, max_position_embeddings=positions, type_vocab_size=1,
        layer_norm_eps=1e-5, pad_token_id=1, bos_token_id=0, eos_token_id=2)
    encoder = XLMRobertaModel(config, add_pooling_layer=False).eval()
    sparse_linear, colbert_linear = torch.nn.Linear(hidden, 1), torch.nn.Linear(hidden, hidden)
    with staged_directory(output) as staging:
        encoder.save_pretrained(staging, safe_serialization=True)
        # fp16, as the published checkpoint saves its heads
        torch.save({k: v.half() for k, v in sparse_linear.state_dict().items()}, staging / "sparse_linear.pt")
        torch.save({k: v.half() for k, v in colbert_linear.state_dict().items()}, staging / "colbert_linear.pt")
        tokenizer.save_pretrained(staging)
    return Path(output).resolve()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m splade_triton.artifacts.bge_m3", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    fixture = commands.add_parser("fixture", help="write a random BGE-M3-shaped checkpoint (published layout)")
    fixture.add_argument("--output", type=Path, required=True)
    fixture.add_argument("--hidden", type=int, default=32)
    fixture.add_argument("--layers", type=int, default=2)
    fixture.add_argument("--heads", type=int, default=2)
    fixture.add_argument("--intermediate", type=int, default=None, help="default: 4 x hidden")
    fixture.add_argument("--positions", type=int, default=514, help="max_position_embeddings (max length + 2)")
    fixture.add_argument("--vocab", type=int, default=None, help="embedding rows (default: the tokenizer's size)")
    fixture.add_argument("--seed", type=int, default=0)
    fixture.add_argument("--full-size", action="store_true",
                         help="XLM-R-large / BGE-M3 shapes: hidden 1024, 24 layers, 16 heads, 8194 positions, "
                              "vocab 250002 (random weights, ~2.27 GB; the tokenizer stays the small one)")
    args = parser.parse_args(argv)
    settings = dict(hidden=args.hidden, layers=args.layers, heads=args.heads, intermediate=args.intermediate,
                    positions=args.positions, vocab=args.vocab)
    if args.full_size:
        settings = FULL_SIZE
    output = build_fixture(args.output, seed=args.seed, **settings)
    print(f"wrote a random BGE-M3-shaped checkpoint ({', '.join(f'{k} {v}' for k, v in settings.items() if v)}) "
          f"to {output}")


if __name__ == "__main__":
    main()
