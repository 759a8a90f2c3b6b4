"""Sparse models with a query side and a document side: their layouts, export, validation, fixtures.

Layouts read (``detect``), each with its sides (``inspect``):

- ``sentence-transformers`` / ``sentence-transformers-router``: a directory
  saved by sentence-transformers' SparseEncoder (modules.json). Either one
  encoder for both sides (``Transformer(fill-mask)`` or ``MLMTransformer``,
  then ``SpladePooling``), or a ``Router`` (router_config.json) whose "query"
  and "document" routes are each ``[SparseStaticEmbedding]`` (an
  inference-free query side: a weight per token) or ``[MLMTransformer,
  SpladePooling]`` (two encoders, efficient-splade style; or one module shared
  by both routes). The activation comes from SpladePooling's config.json:
  sentence-transformers' ``relu`` is log1p(relu(x)) (our ``log1p_relu``), its
  ``log1p_relu`` is log1p(log1p(relu(x))) (our ``log1p_log1p_relu``, the
  OpenSearch v3 document encoders, which ship this layout).
- ``opensearch-idf``: OpenSearch's inference-free models up to v2
  (opensearch-neural-sparse-encoding-doc-v1/v2-*): a masked-LM checkpoint
  (BertForMaskedLM) with ``idf.json`` (token -> weight) beside it and no
  modules.json. Query side: the idf weight of each distinct token of the
  query; document side: max over tokens of log1p(relu(MLM logits)), the
  formula of their model cards. The idf vector is built as
  SparseStaticEmbedding.from_json builds it (0 for tokens absent from
  idf.json; a token the tokenizer does not know lands on its unknown token's
  id, as there). Their model cards also zero the special tokens' document
  weights; sentence-transformers (the reference here) does not.

Every side must tokenize with one vocabulary (one tokenizer is served); each
masked-LM checkpoint must carry its trained head (reference.load's checks).

``export`` writes the exported directory all at once: ``model.onnx`` (the
document side's fused graph, onnx_graph.export), ``query.onnx`` (a pair's
query graph), ``query_weights.npy`` (a static query side: float32 [vocab], by
token id), the tokenizer files and export_info.json with "layout" and
"sides" (splade_triton/serving/sides.py reads them). It fails unless every
side's vectors, computed from those files, equal sentence-transformers'
``encode_query`` / ``encode_document`` on the same directory (for
opensearch-idf, the equivalent SparseEncoder built in memory).

``python -m splade_triton.artifacts.asymmetric fixture --layout
opensearch|router-static|router-pair --output DIR`` writes a tiny random
model in each layout (no such model is reachable here) with SPLADE-tiny's
tokenizer and an idf table computed from real text.
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from splade_triton.artifacts import reference
from splade_triton.artifacts.files import file_sha256, staged_directory
from splade_triton.artifacts.onnx_graph import INPUTS, OUTPUT, ExportError
from splade_triton.artifacts.texts import VARIED_TEXTS
from splade_triton.serving.splade import activate

__all__ = ["LAYOUTS", "Layout", "LayoutError", "Side", "ST_ACTIVATIONS", "VALIDATION_TEXTS", "build_fixture",
           "detect", "export", "idf_table", "idf_weights", "inspect", "is_layout", "side_vectors",
           "st_reference", "validate"]

LAYOUT_ST = "sentence-transformers"
LAYOUT_ROUTER = "sentence-transformers-router"
LAYOUT_OPENSEARCH = "opensearch-idf"
LAYOUTS = (LAYOUT_ST, LAYOUT_ROUTER, LAYOUT_OPENSEARCH)

# sentence-transformers' SpladePooling activation_function -> splade_triton.serving.splade.ACTIVATIONS.
# Its names count the function inside log1p: "relu" is log1p(relu(x)).
ST_ACTIVATIONS = {"relu": "log1p_relu", "log1p_relu": "log1p_log1p_relu"}

# A tokenizer that declares no length (transformers' 1e30 sentinel) truncates nothing in
# sentence-transformers. The server refuses texts over 65536 bytes (max_text_bytes), and no
# tokenizer makes more tokens than bytes, so this length truncates nothing either.
NO_LIMIT = 65536

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")

VALIDATION_TEXTS = [
    *VARIED_TEXTS,
    "[CLS] what is [MASK] ? [SEP]",  # literal special tokens: the tokenizer maps them to their ids
    "[UNK] [UNK] unknown unknown",
    "capital capital capital of of france france",  # repeated tokens: one weight per distinct token
    "how many people live in paris",
]


class LayoutError(reference.CheckpointError):
    """The directory is not a layout this export reads, or its files contradict each other."""


@dataclass
class Side:
    """One side as it is served: its encoder and how its texts are tokenized."""

    encoder: str  # "mlm" | "static"
    folder: Path  # the masked-LM checkpoint, or the static module's folder
    special_tokens: bool  # whether tokenization adds [CLS] / [SEP]
    max_length: int  # truncation length in tokens, as sentence-transformers applies it
    activation: str | None = None  # mlm: a splade.ACTIVATIONS name
    weights: np.ndarray | None = None  # static: float32 [tokenizer vocabulary], by token id
    route: str | None = None  # the Router route it comes from


@dataclass
class Layout:
    kind: str
    root: Path
    query: Side
    document: Side
    notes: dict = field(default_factory=dict)

    @property
    def sides(self) -> dict[str, Side]:
        return {"query": self.query, "document": self.document}

    @property
    def pair(self) -> bool:
        """Two masked-LM encoders (two graphs)."""
        return self.query.encoder == "mlm" and self.query.folder != self.document.folder


# --- reading the layouts ---------------------------------------------------------------------


def detect(model: str | Path) -> str | None:
    """The layout of a local directory (a name of LAYOUTS), or None for a plain masked-LM directory."""
    path = Path(model)
    if not path.is_dir():
        return None
    if (path / "modules.json").is_file():
        try:
            modules = _read_json(path / "modules.json")
        except LayoutError:
            return LAYOUT_ST  # inspect names the fault
        routed = isinstance(modules, list) and any(
            isinstance(m, dict) and _class_name(m.get("type", "")) in ("Router", "Asym") for m in modules)
        return LAYOUT_ROUTER if routed else LAYOUT_ST
    if (path / "idf.json").is_file():
        return LAYOUT_OPENSEARCH
    return None


def is_layout(model: str | Path) -> bool:
    return detect(model) is not None


def _read_json(path: Path):
    if not path.is_file():
        raise LayoutError(f"{path} is missing")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise LayoutError(f"cannot read {path}: {e}") from None


def _class_name(type_ref: str) -> str:
    return type_ref.rsplit(".", 1)[-1] if isinstance(type_ref, str) else ""


def _module_kind(type_ref: str, folder: Path, named_in: Path) -> str:
    """"mlm", "pooling" or "static" for a module sentence-transformers saved; refuses any other."""
    name = _class_name(type_ref)
    if not str(type_ref).startswith("sentence_transformers."):
        raise LayoutError(f"{named_in}: module {folder.name or folder} is {type_ref!r}, not a sentence-transformers "
                          f"module; supported: MLMTransformer / Transformer(fill-mask), SpladePooling, "
                          f"SparseStaticEmbedding")
    if name == "MLMTransformer":
        return "mlm"
    if name == "Transformer":
        config_path = folder / "sentence_bert_config.json"
        task = _read_json(config_path).get("transformer_task", "feature-extraction") if config_path.is_file() \
            else "feature-extraction"
        if task != "fill-mask":
            raise LayoutError(f"{config_path}: transformer_task is {task!r}; a SPLADE encoder is a fill-mask "
                              f"(masked-LM) Transformer")
        return "mlm"
    if name == "SpladePooling":
        return "pooling"
    if name == "SparseStaticEmbedding":
        return "static"
    raise LayoutError(f"{named_in}: unsupported module {name} ({type_ref}) in {folder}; supported: "
                      f"MLMTransformer / Transformer(fill-mask), SpladePooling, SparseStaticEmbedding"
                      + (", Router (top level only)" if name in ("Router", "Asym") else ""))


def pooling_activation(folder: Path) -> str:
    """Our activation name from a SpladePooling folder's config.json; refuses sum pooling."""
    path = folder / "config.json"
    config = _read_json(path)
    strategy = config.get("pooling_strategy", "max")
    if strategy != "max":
        raise LayoutError(f"{path}: pooling_strategy {strategy!r} is not served: only 'max' (SPLADE v2 and later) "
                          f"pools after the encoder graph's max over tokens")
    function = config.get("activation_function", "relu")
    if function not in ST_ACTIVATIONS:
        raise LayoutError(f"{path}: activation_function {function!r} is unknown; known: {', '.join(ST_ACTIVATIONS)}")
    return ST_ACTIVATIONS[function]


def _token_limit(model_max_length) -> int:
    limit = int(model_max_length) if model_max_length else NO_LIMIT
    return min(limit, NO_LIMIT)


def mlm_max_length(folder: Path, tokenizer, positions: int | None) -> int:
    """The truncation length sentence-transformers' Transformer applies for ``folder``.

    ``max_seq_length`` of sentence_bert_config.json (older saves) or a
    ``model_max_length`` in its tokenizer arguments sets the tokenizer's;
    otherwise the tokenizer's own, capped at the position embeddings.
    """
    config_path = folder / "sentence_bert_config.json"
    config = _read_json(config_path) if config_path.is_file() else {}
    kwargs = config.get("processor_kwargs") or config.get("tokenizer_args") or {}
    explicit = config.get("max_seq_length") or kwargs.get("model_max_length")
    if explicit:
        return _token_limit(explicit)
    length = tokenizer.model_max_length
    if positions is not None and positions != -1:
        length = min(length, positions)
    return _token_limit(length)


def load_tokenizer(folder: Path):
    from transformers import AutoTokenizer

    if not any((folder / name).is_file() for name in ("tokenizer.json", "vocab.txt")):
        raise LayoutError(f"{folder} has no tokenizer (tokenizer.json or vocab.txt)")
    return AutoTokenizer.from_pretrained(str(folder), use_fast=True)


def idf_weights(idf: dict, tokenizer, source: Path) -> tuple[np.ndarray, list[str]]:
    """float32 [len(vocab)] as SparseStaticEmbedding.from_json builds it, and the tokens unknown to the tokenizer.

    Absent tokens weigh 0; an unknown token's weight goes to the unknown
    token's id (transformers' convert_tokens_to_ids), the last one read winning.
    """
    if not isinstance(idf, dict) or not idf:
        raise LayoutError(f"{source}: expected a non-empty object token -> weight")
    bad = [t for t, w in idf.items() if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w)]
    if bad:
        raise LayoutError(f"{source}: weights must be finite numbers; {len(bad)} are not (e.g. {bad[0]!r}: "
                          f"{idf[bad[0]]!r})")
    vocab = tokenizer.get_vocab()
    ids = tokenizer.convert_tokens_to_ids(list(idf))
    unknown = [t for t in idf if t not in vocab]
    if any(i is None for i in ids):
        raise LayoutError(f"{source}: {len(unknown)} tokens are not in the tokenizer's vocabulary (e.g. {unknown[0]!r}) "
                          f"and the tokenizer has no unknown token to map them to")
    by_id = dict(zip(ids, idf.values()))  # in file order: a repeated id keeps the last weight, as from_json
    weights = np.zeros(len(vocab), dtype=np.float32)
    weights[list(by_id)] = np.asarray(list(by_id.values()), dtype=np.float32)
    return weights, unknown


def _static_side(folder: Path, named_in: Path) -> Side:
    """A SparseStaticEmbedding folder: its tokenizer and weights (model.safetensors, or the idf json it names)."""
    tokenizer = load_tokenizer(folder)
    config = _read_json(folder / "config.json") if (folder / "config.json").is_file() else {}
    if str(config.get("path", "")).endswith(".json"):
        source = Path(config["path"]) if Path(config["path"]).is_absolute() else folder / config["path"]
        weights, _ = idf_weights(_read_json(source), tokenizer, source)
    elif (folder / "model.safetensors").is_file():
        from safetensors.numpy import load_file

        state = load_file(str(folder / "model.safetensors"))
        if set(state) != {"weight"} or state["weight"].ndim != 1:
            raise LayoutError(f"{folder / 'model.safetensors'}: expected one 1-D tensor 'weight', got "
                              f"{ {k: list(v.shape) for k, v in state.items()} }")
        weights = state["weight"].astype(np.float32)
    else:
        raise LayoutError(f"{folder} (named in {named_in}) has no weights: model.safetensors, or an idf json "
                          f"named by config.json's path")
    return Side("static", folder, special_tokens=False, max_length=_token_limit(tokenizer.model_max_length),
                weights=weights)


def _mlm_side(folder: Path, pooling: Path) -> Side:
    from transformers import AutoConfig

    tokenizer = load_tokenizer(folder)
    positions = getattr(AutoConfig.from_pretrained(str(folder)), "max_position_embeddings", None)
    return Side("mlm", folder, special_tokens=True, max_length=mlm_max_length(folder, tokenizer, positions),
                activation=pooling_activation(pooling))


def _route_side(modules: list[tuple[str, Path]], named_in: Path, route: str) -> Side:
    """A side from its modules [(type, folder), ...]: [static] or [mlm, pooling]."""
    kinds = [_module_kind(t, f, named_in) for t, f in modules]
    if kinds == ["static"]:
        side = _static_side(modules[0][1], named_in)
    elif kinds == ["mlm", "pooling"]:
        side = _mlm_side(modules[0][1], modules[1][1])
    else:
        names = ", ".join(_class_name(t) for t, _ in modules) or "no modules"
        raise LayoutError(f"{named_in}: route {route!r} is [{names}]; a served side is [SparseStaticEmbedding] or "
                          f"[MLMTransformer, SpladePooling]")
    side.route = route
    return side


def resolve_route(config: dict, task: str, named_in: Path) -> str:
    """The route sentence-transformers' Router takes for a text of ``task`` (its documented priority;
    encode_query / encode_document pass the task, and the modality "text" for strings)."""
    structure = config.get("structure", {})
    parameters = config.get("parameters", {})
    mappings = {}
    for key, route in (parameters.get("route_mappings") or {}).items():
        try:
            mappings[ast.literal_eval(key)] = route
        except (ValueError, SyntaxError):
            continue
    for key in ((task, "text"), (task, None), (None, "text"), (None, None)):
        if key in mappings:
            return mappings[key]
    for key in (task, "text"):
        if key in structure:
            return key
    # With a task given, the Router raises rather than take its default route.
    raise LayoutError(f"{named_in}: no route for {task} texts (routes: {', '.join(structure) or 'none'})")


def _check_encoder_config(root: Path) -> None:
    """Refuse what encode_query / encode_document would apply that the served sides do not."""
    path = root / "config_sentence_transformers.json"
    if not path.is_file():
        return
    config = _read_json(path)
    prompts = {k: v for k, v in (config.get("prompts") or {}).items() if v}
    if prompts:
        raise LayoutError(f"{path}: prompts {sorted(prompts)} are prepended to texts by sentence-transformers; "
                          f"the served sides do not prepend prompts")
    if config.get("max_active_dims"):
        raise LayoutError(f"{path}: max_active_dims {config['max_active_dims']} keeps only the largest terms; "
                          f"ask the server for them with the top_k request parameter instead, and remove it")


def _inspect_sentence_transformers(root: Path) -> Layout:
    modules_path = root / "modules.json"
    modules = _read_json(modules_path)
    if not isinstance(modules, list) or not all(isinstance(m, dict) and "type" in m for m in modules):
        raise LayoutError(f"{modules_path}: expected a list of modules with a type each")
    _check_encoder_config(root)
    entries = [(m["type"], root / m.get("path", "")) for m in modules]
    if entries and _class_name(entries[0][0]) in ("Router", "Asym"):
        # Modules after the Router (e.g. one SpladePooling for both routes) follow every route.
        router_dir, after = entries[0][1], entries[1:]
        config_path = router_dir / "router_config.json"
        if not config_path.is_file() and (router_dir / "config.json").is_file():
            config_path = router_dir / "config.json"  # sentence-transformers' older Asym layout
        config = _read_json(config_path)
        types, structure = config.get("types", {}), config.get("structure", {})
        sides = {}
        for task in ("query", "document"):
            route = resolve_route(config, task, config_path)
            if route not in structure:
                raise LayoutError(f"{config_path}: route {route!r} is not in its structure")
            missing = [m for m in structure[route] if m not in types]
            if missing:
                raise LayoutError(f"{config_path}: route {route!r} names modules without a type: {', '.join(missing)}")
            sides[task] = _route_side([(types[m], router_dir / m) for m in structure[route]] + after,
                                      config_path, route)
        if sides["document"].encoder != "mlm":
            raise LayoutError(f"{config_path}: the document route {sides['document'].route!r} is static; only a "
                              f"query side may be inference-free")
        return Layout(LAYOUT_ROUTER, root, sides["query"], sides["document"])
    side = _route_side(entries, modules_path, "")
    if side.encoder != "mlm":
        raise LayoutError(f"{modules_path}: a SparseStaticEmbedding alone encodes no documents; export a Router "
                          f"with a masked-LM document route")
    return Layout(LAYOUT_ST, root, side, side)


def _inspect_opensearch(root: Path) -> Layout:
    if not any((root / name).is_file() for name in ("tokenizer.json", "vocab.txt")):
        raise LayoutError(f"{root} has idf.json but no tokenizer (tokenizer.json or vocab.txt): the idf table's "
                          f"tokens cannot be given ids")
    from transformers import AutoConfig

    tokenizer = load_tokenizer(root)
    positions = getattr(AutoConfig.from_pretrained(str(root)), "max_position_embeddings", None)
    max_length = mlm_max_length(root, tokenizer, positions)
    document = Side("mlm", root, special_tokens=True, max_length=max_length, activation="log1p_relu")
    idf = _read_json(root / "idf.json")
    weights, unknown = idf_weights(idf, tokenizer, root / "idf.json")
    # The query side shares the document encoder's tokenizer, whose length that encoder capped.
    query = Side("static", root, special_tokens=False, max_length=max_length, weights=weights)
    notes = {"idf_tokens": len(idf), "idf_tokens_not_in_vocabulary": len(unknown)}
    if unknown:
        print(f"warning: {len(unknown)} tokens of {root / 'idf.json'} are not in the tokenizer's vocabulary "
              f"(e.g. {unknown[:3]}); as in sentence-transformers, their weight goes to the unknown token's id")
    return Layout(LAYOUT_OPENSEARCH, root, query, document, notes)


def _tokenizer_identity(tokenizer) -> tuple:
    """What must agree for one tokenizer to serve every side: vocabulary, normalizer, pre-tokenizer."""
    backend = json.loads(tokenizer.backend_tokenizer.to_str())
    return tokenizer.get_vocab(), backend.get("normalizer"), backend.get("pre_tokenizer")


def check_one_vocabulary(layout: Layout) -> None:
    """Refuse sides whose tokenizers differ (vocabulary, normalizer or pre-tokenizer), naming both folders."""
    folders = list(dict.fromkeys([layout.document.folder, layout.query.folder]))
    if len(folders) < 2:
        return
    first, other = (_tokenizer_identity(load_tokenizer(f)) for f in folders)
    if first != other:
        what = "vocabularies" if first[0] != other[0] else "normalizers or pre-tokenizers"
        raise LayoutError(f"the query side ({folders[1]}) and the document side ({folders[0]}) tokenize with "
                          f"different {what}: one tokenizer serves both sides")


def inspect(model: str | Path) -> Layout:
    """The sides of a directory in one of LAYOUTS, checked; LayoutError names the file at fault."""
    root = Path(model)
    kind = detect(root)
    if kind is None:
        raise LayoutError(f"{root} has neither modules.json (sentence-transformers) nor idf.json (OpenSearch)")
    layout = _inspect_opensearch(root) if kind == LAYOUT_OPENSEARCH else _inspect_sentence_transformers(root)
    check_one_vocabulary(layout)
    return layout


# --- the reference: sentence-transformers --------------------------------------------------


def st_model(layout: Layout):
    """sentence-transformers' SparseEncoder for the layout (opensearch-idf: the equivalent one, in memory)."""
    from sentence_transformers import SparseEncoder

    if layout.kind != LAYOUT_OPENSEARCH:
        return SparseEncoder(str(layout.root), device="cpu")
    from sentence_transformers.base.modules import Router, Transformer
    from sentence_transformers.sparse_encoder.modules import SparseStaticEmbedding, SpladePooling

    document = Transformer(str(layout.root), transformer_task="fill-mask")
    query = SparseStaticEmbedding.from_json(str(layout.root / "idf.json"), tokenizer=document.tokenizer, frozen=True)
    router = Router.for_query_document([query], [document, SpladePooling(activation_function="relu")])
    return SparseEncoder(modules=[router], device="cpu", similarity_fn_name="dot")


def _st_token_limits(model, layout: Layout) -> dict[str, int]:
    """Each side's truncation length in the loaded SparseEncoder (its input module's tokenizer)."""
    first = model[0]
    limits = {}
    for name, side in layout.sides.items():
        module = first.sub_modules[side.route or name][0] if hasattr(first, "sub_modules") else first
        limits[name] = _token_limit(module.tokenizer.model_max_length)
    return limits


def st_reference(layout: Layout, texts) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """(side -> float32 [n, vocab] from encode_query / encode_document, side -> truncation length there)."""
    import torch

    model = st_model(layout)
    vectors = {}
    with torch.inference_mode():
        for name, encode in (("query", model.encode_query), ("document", model.encode_document)):
            out = encode(list(texts), batch_size=8, convert_to_tensor=True, convert_to_sparse_tensor=False,
                         show_progress_bar=False)
            vectors[name] = out.to_dense().float().numpy() if out.is_sparse else out.float().numpy()
    return vectors, _st_token_limits(model, layout)


# --- our vectors, from the exported files ---------------------------------------------------


def side_vectors(side: dict, folder: Path, tokenizer, texts, vocab_size: int, batch: int = 7) -> np.ndarray:
    """A side's vectors, float32 [n, vocab], from an exported directory as the server computes them.

    ``side`` is its export_info "sides" entry. mlm: the graph's pooled logits
    (padded batches of mixed lengths) then the activation; static: the weight
    of each distinct token id of the text's tokenization.
    """
    import onnxruntime as ort

    texts = list(texts)
    out = np.zeros((len(texts), vocab_size), dtype=np.float32)
    options = dict(padding=True, truncation=True, max_length=side["max_length"],
                   add_special_tokens=side["special_tokens"])
    if side["encoder"] == "static":
        weights = np.load(folder / side["weights"])
        for i, text in enumerate(texts):
            ids = np.unique(np.asarray(tokenizer(text, **{**options, "padding": False})["input_ids"], dtype=np.int64))
            out[i, ids] = weights[ids]
        return out
    session = ort.InferenceSession(str(folder / side["graph"]), providers=["CPUExecutionProvider"])
    names = ([i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()])
    if names != (list(INPUTS), [OUTPUT]):
        raise ExportError(f"{side['graph']}: unexpected graph signature: inputs {names[0]}, outputs {names[1]}")
    for i in range(0, len(texts), batch):
        enc = tokenizer(texts[i : i + batch], return_tensors="np", **options)
        pooled = session.run(None, {name: enc[name].astype(np.int64) for name in INPUTS})[0]
        activate(pooled, out=out[i : i + batch], activation=side["activation"])
    return out


def validate(folder: Path, info: dict, layout: Layout, texts, tolerance: float) -> dict:
    """Compare each side of the exported ``folder`` with sentence-transformers; raise ExportError on a mismatch."""
    import sentence_transformers

    tokenizer = load_tokenizer(folder)
    expected, st_limits = st_reference(layout, texts)
    report = {"reference": f"sentence-transformers {sentence_transformers.__version__} SparseEncoder "
                           f"encode_query / encode_document (fp32, cpu)",
              "texts": len(texts), "tolerance": tolerance}
    problems = []
    for name, side in info["sides"].items():
        if st_limits[name] != side["max_length"]:
            problems.append(f"the {name} side truncates at {st_limits[name]} tokens in sentence-transformers, "
                            f"{side['max_length']} read from the files")
        got = side_vectors(side, folder, tokenizer, texts, info["vocab_size"])
        ref = expected[name]
        if ref.shape[1] < got.shape[1]:  # a static side's table as wide as the tokenizer, the model padded
            ref = np.pad(ref, ((0, 0), (0, got.shape[1] - ref.shape[1])))
        if ref.shape != got.shape:
            problems.append(f"the {name} side's vectors are {list(got.shape)}, sentence-transformers' {list(ref.shape)}")
            continue
        lengths = [len(ids) for ids in tokenizer(list(texts), add_special_tokens=side["special_tokens"],
                                                 verbose=False)["input_ids"]]
        diff = float(np.abs(got - ref).max())
        mismatches = int(((got != 0) != (ref != 0)).sum())
        report[name] = {"encoder": side["encoder"], "max_length": side["max_length"],
                        "truncated_texts": sum(n > side["max_length"] for n in lengths),
                        "max_abs_diff": diff, "nonzero_mismatches": mismatches,
                        "nonzero_terms": int((ref != 0).sum())}
        print(f"validation of the {name} side ({side['encoder']}{', ' + side['activation'] if side.get('activation') else ''}) "
              f"against sentence-transformers on {len(texts)} texts: max abs diff {diff:.3g} (tolerance {tolerance:g}), "
              f"non-zero set mismatches {mismatches} of {report[name]['nonzero_terms']} terms")
        if diff > tolerance or mismatches:
            problems.append(f"the {name} side does not match sentence-transformers: max abs diff {diff:.3g} > "
                            f"{tolerance:g} or {mismatches} non-zero mismatches")
        if not report[name]["nonzero_terms"]:
            problems.append(f"the {name} side gives no non-zero term on any text: nothing was compared")
    if problems:
        raise ExportError("; ".join(problems))
    report["max_abs_diff"] = max(report[n]["max_abs_diff"] for n in info["sides"])
    report["nonzero_mismatches"] = sum(report[n]["nonzero_mismatches"] for n in info["sides"])
    return report


# --- the export -----------------------------------------------------------------------------


def export(model: str | Path, output: Path, opset: int = 18, tolerance: float = 1e-4,
           texts=VALIDATION_TEXTS) -> Path:
    """Export, validate and write a directory in one of LAYOUTS (see the module docstring)."""
    from splade_triton.artifacts.onnx_graph import export as export_graph

    layout = inspect(model)
    document_tokenizer, document_mlm = reference.load(str(layout.document.folder))
    vocab_size, tokenizer_vocab = reference.vocab_sizes(document_tokenizer, document_mlm)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        files = {"model.onnx": tmp / "model.onnx"}
        export_graph(document_mlm, files["model.onnx"], opset)
        del document_mlm
        sides = {}
        for name, side in layout.sides.items():
            if side.encoder == "static":
                weights = side.weights
                if len(weights) > vocab_size:
                    raise LayoutError(f"the {name} side's weights cover {len(weights)} tokens but the document "
                                      f"encoder's vocabulary has {vocab_size}")
                files["query_weights.npy"] = tmp / "query_weights.npy"
                np.save(files["query_weights.npy"], np.pad(weights, (0, vocab_size - len(weights))).astype(np.float32))
                sides[name] = {"encoder": "static", "weights": "query_weights.npy", "special_tokens": False,
                               "max_length": side.max_length}
                continue
            graph = "model.onnx"
            if side.folder != layout.document.folder:
                graph = "query.onnx"
                _, mlm = reference.load(str(side.folder))
                if int(mlm.config.vocab_size) != vocab_size:
                    raise LayoutError(f"the {name} encoder ({side.folder}) has a vocabulary of "
                                      f"{mlm.config.vocab_size}, the document encoder ({layout.document.folder}) "
                                      f"{vocab_size}: one vector space needs one vocabulary")
                files[graph] = tmp / graph
                export_graph(mlm, files[graph], opset)
            sides[name] = {"encoder": "mlm", "graph": graph, "activation": side.activation, "special_tokens": True,
                           "max_length": side.max_length}
        document_tokenizer.save_pretrained(str(tmp / "tokenizer"))
        for name in TOKENIZER_FILES:
            files[name] = tmp / "tokenizer" / name
        info = {
            "kind": "splade",
            "layout": layout.kind,
            "source_model": str(model),
            "opset": opset,
            "onnx_sha256": file_sha256(files["model.onnx"]),
            **({"query_onnx_sha256": file_sha256(files["query.onnx"])} if "query.onnx" in files else {}),
            **({"query_weights_sha256": file_sha256(files["query_weights.npy"])} if "query_weights.npy" in files else {}),
            "vocab_size": vocab_size,
            "tokenizer_vocab_size": tokenizer_vocab,
            "sides": sides,
            **layout.notes,
        }
        # Validate the files as they will be shipped (a folder with exactly them).
        staged = tmp / "exported"
        staged.mkdir()
        for name, path in files.items():
            shutil.copyfile(path, staged / name)
        info["validation"] = validate(staged, info, layout, texts, tolerance)
        with staged_directory(output) as staging:
            for name in files:
                shutil.copyfile(staged / name, staging / name)
            (staging / "export_info.json").write_text(json.dumps(info, indent=2) + "\n")
    return Path(output).resolve()


# --- fixtures -------------------------------------------------------------------------------

FIXTURE_LAYOUTS = {"opensearch": "log1p_relu", "router-static": "log1p_log1p_relu", "router-pair": "log1p_relu"}
DEFAULT_TOKENIZER = Path("models/splade-tiny")


def idf_table(tokenizer, corpus) -> dict[str, float]:
    """token -> idf for every vocabulary token, from document frequencies over ``corpus``.

    BM25's idf, log(1 + (N - df + 0.5) / (df + 0.5)): always > 0, so tokens
    never seen get the largest weight, frequent ones a floor near
    log(1 + 0.5 / (N + 0.5)). [PAD] weighs 0 (never a query term).
    """
    n = len(corpus)
    df = np.zeros(len(tokenizer.get_vocab()), dtype=np.int64)
    for text in corpus:
        df[np.unique(np.asarray(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=np.int64))] += 1
    idf = np.log1p((n - df + 0.5) / (df + 0.5))
    table = {token: round(float(idf[i]), 6) for token, i in sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])}
    if tokenizer.pad_token is not None:
        table[tokenizer.pad_token] = 0.0
    return table


def random_mlm(path: Path, tokenizer_dir: Path, seed: int, hidden: int = 32, layers: int = 2, heads: int = 2) -> Path:
    """A random BertForMaskedLM with ``tokenizer_dir``'s tokenizer, saved to ``path``.

    Its head is scaled and given a random negative bias per term, so that a
    text has a few hundred to a few thousand non-zero terms (a short query
    fewer, a 256-token passage more) out of 30522, and weights up to about 2:
    non-zero sets worth comparing, and pooled logits not within float error
    of 0 on the validation texts (the closest seen: 3e-5).
    """
    import torch
    from transformers import BertConfig, BertForMaskedLM

    tokenizer = load_tokenizer(tokenizer_dir)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=heads, intermediate_size=2 * hidden, max_position_embeddings=512)
    mlm = BertForMaskedLM(config).eval()
    head = mlm.cls.predictions
    with torch.no_grad():
        head.transform.LayerNorm.weight.mul_(12.0)
        head.bias.copy_(torch.randn(config.vocab_size) - 4.5)
    mlm.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _fixture_corpus() -> list[str]:
    from splade_triton.artifacts.bge_m3 import CORPUS

    return [*CORPUS, *VARIED_TEXTS]


def build_fixture(layout: str, output: Path, activation: str | None = None, tokenizer_dir: Path = DEFAULT_TOKENIZER,
                  seed: int = 0) -> Path:
    """Write a tiny random model in ``layout`` (a FIXTURE_LAYOUTS key) to ``output``, all at once."""
    import torch

    activation = activation or FIXTURE_LAYOUTS[layout]
    # Other weights in each layout, so that serving one fixture's files for another's shows.
    seed += 10 * list(FIXTURE_LAYOUTS).index(layout)
    st_function = {v: k for k, v in ST_ACTIVATIONS.items()}[activation]
    with staged_directory(output) as staging, tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if layout == "opensearch":
            if activation != "log1p_relu":
                raise SystemExit("the opensearch layout (idf.json) has log1p(relu) documents; --activation "
                                 "log1p_log1p_relu is the router-static layout (OpenSearch v3)")
            random_mlm(staging, tokenizer_dir, seed)
            table = idf_table(load_tokenizer(staging), _fixture_corpus())
            (staging / "idf.json").write_text(json.dumps(table, ensure_ascii=False) + "\n", encoding="utf-8")
            return Path(output).resolve()

        from sentence_transformers import SparseEncoder
        from sentence_transformers.base.modules import Router, Transformer
        from sentence_transformers.sparse_encoder.modules import (MLMTransformer, SparseStaticEmbedding,
                                                                  SpladePooling)

        document = Transformer(str(random_mlm(tmp / "document", tokenizer_dir, seed)), transformer_task="fill-mask",
                               max_seq_length=256 if layout == "router-pair" else None)
        if layout == "router-static":
            table = idf_table(document.tokenizer, _fixture_corpus())
            weight = torch.tensor([table[t] for t, _ in sorted(document.tokenizer.get_vocab().items(),
                                                               key=lambda kv: kv[1])], dtype=torch.float32)
            query = [SparseStaticEmbedding(tokenizer=document.tokenizer, weight=weight, frozen=True)]
        elif layout == "router-pair":
            # MLMTransformer: the module type published pairs were saved with; a shorter query length.
            query = [MLMTransformer(str(random_mlm(tmp / "query", tokenizer_dir, seed + 1)), max_seq_length=64),
                     SpladePooling(activation_function=st_function)]
        else:
            raise SystemExit(f"unknown fixture layout {layout!r}; known: {', '.join(FIXTURE_LAYOUTS)}")
        router = Router.for_query_document(query, [document, SpladePooling(activation_function=st_function)])
        SparseEncoder(modules=[router], device="cpu", similarity_fn_name="dot").save(str(staging))
    return Path(output).resolve()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m splade_triton.artifacts.asymmetric", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    fixture = commands.add_parser("fixture", help="write a tiny random query/document model in a layout")
    fixture.add_argument("--layout", choices=tuple(FIXTURE_LAYOUTS), required=True)
    fixture.add_argument("--output", type=Path, required=True)
    fixture.add_argument("--activation", choices=tuple(ST_ACTIVATIONS.values()), default=None,
                         help="the document side's (default: opensearch log1p_relu, router-static "
                              "log1p_log1p_relu as OpenSearch v3, router-pair log1p_relu)")
    fixture.add_argument("--tokenizer", type=Path, default=DEFAULT_TOKENIZER,
                         help="the tokenizer's directory (default: models/splade-tiny, from script/setup)")
    fixture.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    output = build_fixture(args.layout, args.output, args.activation, args.tokenizer, args.seed)
    print(f"wrote a random {args.layout} model ({args.activation or FIXTURE_LAYOUTS[args.layout]} documents) "
          f"to {output}")


if __name__ == "__main__":
    main()
