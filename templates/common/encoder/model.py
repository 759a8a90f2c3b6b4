"""Triton Python model: the encoder of every kind (SPLADE, BGE-M3), on ONNX Runtime or OpenVINO.

The graph's outputs are this model's outputs (its config.pbtxt lists them):
SPLADE's ``pooled_logits`` [N, vocab]; BGE-M3's ``dense`` [N, hidden],
``token_weights`` [N, L] and ``colbert`` [N, L-1, hidden], plus
``colbert_lengths`` [N, 1] computed from the mask. Requests padded to
different lengths are regrouped by length (splade_triton.serving.encoding).
Settings: ``runtime`` (onnxruntime | openvino), ``precision`` (fp32 | bf16 |
int8), compiled once at load (splade_triton.serving.runtime).

Sides (splade_triton.serving.sides): a request's ``input_type`` routes its
rows to its side's encoder: a graph (one shared by both sides, or each side
its own: a query/document pair), or a static weight table (an inference-free
query side: the weight of each distinct token, no transformer run).
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import triton_python_backend_utils as pb_utils

# This folder's own copy of splade_triton (placed by the repository assembly) before any other:
# the stub puts the server's working directory first on sys.path.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from splade_triton.serving.batching import attention_length
from splade_triton.serving.encoding import RaggedEncoder
from splade_triton.serving.limits import check_budget, check_tokens, head_dim, max_length, vocabulary_size
from splade_triton.serving.params import Param, parse_text_options, read_model_parameters
from splade_triton.serving.runtime import PRECISIONS, RUNTIMES, check_fidelity, fused_attention, model_file, open_session
from splade_triton.serving.sides import read_export_info, read_sides
from splade_triton.serving.splade import static_vectors

_LEVELS = ("disable", "basic", "extended", "all")

PARAMETERS = {
    "onnx_file": Param(str, "model.onnx"),
    "runtime": Param(str, "onnxruntime", lambda v: v in RUNTIMES, " | ".join(RUNTIMES)),
    "precision": Param(str, "fp32", lambda v: v in PRECISIONS, " | ".join(PRECISIONS)),
    # enforce: a bf16 / int8 whose recorded fidelity gate failed is refused at load; warn: served, logged.
    "fidelity_gate": Param(str, "enforce", lambda v: v in ("enforce", "warn"), "enforce | warn"),
    "max_batch_tokens": Param(int, 8192, lambda v: v >= 1, "an integer >= 1"),
    # Longest text accepted (0: the model's position embeddings); the assembly sets the tokenizer's longest side.
    "max_text_tokens": Param(int, 0, lambda v: v >= 0, "an integer >= 0"),
    "intra_op_threads": Param(int, 0, lambda v: v >= 0, "an integer >= 0"),
    "allow_spinning": Param(bool, False),
    "graph_optimization_level": Param(str, "all", lambda v: v in _LEVELS, " | ".join(_LEVELS)),
}

# Per-token outputs and the leading positions their graph drops (colbert: <s>).
TOKEN_OUTPUTS = {"token_weights": 0, "colbert": 1}
# Computed here from the attention mask, not by the graph.
DERIVED_OUTPUTS = {"colbert_lengths"}


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.settings = s = read_model_parameters(config, PARAMETERS)
        folder = os.path.join(args["model_repository"], args["model_version"])
        info_path = os.path.join(folder, "export_info.json")
        warning = check_fidelity(info_path, s["runtime"], s["precision"], s["fidelity_gate"] == "enforce")
        if warning:
            pb_utils.Logger.log_warn(f"{args['model_name']}: {warning}")
        self.name = args["model_name"]
        info = read_export_info(folder)
        self.sides = read_sides(info, info_path)
        declared = [o["name"] for o in config.get("output", [])]
        # onnx_file names the document graph (model.onnx unless set); a pair's query graph is its own.
        graphs = {side.graph for side in self.sides.values() if side.encoder == "mlm"}
        self.graph_of = {name: (s["onnx_file"] if side.graph == "model.onnx" else side.graph)
                         for name, side in self.sides.items() if side.encoder == "mlm"}
        if s["precision"] == "int8" and graphs - {"model.onnx"}:
            raise ValueError(f"precision int8 runs the quantized document graph; {sorted(graphs - {'model.onnx'})} "
                             "has no int8 file: serve this model in fp32 or bf16")
        self.encoders, self.graph_outputs, self.bounds = {}, [], {}
        for graph in sorted(set(self.graph_of.values())):
            self.encoders[graph], self.graph_outputs = self._open(folder, graph, declared, head_dim(info))
        # What each side's requests are checked against: (vocabulary size, longest text).
        for graph, encoder in self.encoders.items():
            vocab = vocabulary_size(info, encoder.session)
            longest = max_length(info, encoder.session, vocab)
            if s["max_text_tokens"]:
                longest = min(longest, s["max_text_tokens"]) if longest else s["max_text_tokens"]
            check_budget(longest, encoder.attention, s["max_batch_tokens"], s["runtime"])
            limits = (vocab, longest)
            self.bounds.update({name: limits for name, g in self.graph_of.items() if g == graph})
        self.static = {}
        for name, side in self.sides.items():
            if side.encoder != "static":
                continue
            if declared != ["pooled_logits"]:
                raise ValueError(f"a static {name} side serves pooled_logits only; this model declares {declared}")
            weights = np.load(os.path.join(folder, side.weights)).astype(np.float32, copy=False)
            if weights.ndim != 1:
                raise ValueError(f"{side.weights}: a static side's weights must be 1-D [vocab], got {weights.shape}")
            widths = {e.vocab_size for e in self.encoders.values()}
            if widths and widths != {weights.shape[0]}:
                raise ValueError(f"{side.weights} has {weights.shape[0]} weights; the graphs' vocabulary is {widths}")
            self.static[name] = weights
            self.bounds[name] = (weights.shape[0], None)  # no positions: a weight per distinct token
            self.graph_outputs = declared

    def _open(self, folder: str, graph: str, declared: list, head: int):
        s = self.settings
        path = model_file(folder, graph, s["precision"])
        session = open_session(path, s["runtime"], s["precision"], s["intra_op_threads"],
                               s["allow_spinning"], s["graph_optimization_level"])
        names = {i.name for i in session.get_inputs()}
        if names != {"input_ids", "attention_mask"}:
            raise ValueError(f"{path} takes inputs {sorted(names)}; expected input_ids, attention_mask")
        outputs = [o.name for o in session.get_outputs()]
        missing = [n for n in declared if n not in outputs and n not in DERIVED_OUTPUTS]
        if missing:
            raise ValueError(f"{path} has outputs {sorted(outputs)}; this model's config declares {', '.join(missing)}")
        graph_outputs = [n for n in declared if n in outputs]
        encoder = RaggedEncoder(session, s["max_batch_tokens"],
                                {n: d for n, d in TOKEN_OUTPUTS.items() if n in graph_outputs},
                                attention_length(head, fused_attention(session)))
        return encoder, graph_outputs

    def _read(self, request):
        """(side, (ids, mask)) of a request, or (None, a message for the caller)."""
        try:
            side = parse_text_options(request.parameters()).input_type
        except ValueError as e:
            return None, str(e)
        ids = pb_utils.get_input_tensor_by_name(request, "input_ids").as_numpy()
        mask = pb_utils.get_input_tensor_by_name(request, "attention_mask").as_numpy()
        problem = check_tokens(ids, mask, *self.bounds[side], allow_empty=side in self.static)
        return (None, problem) if problem else (side, (ids, mask))

    def _failed(self, error: Exception):
        pb_utils.Logger.log_error(f"{self.name}: a request failed on its own: {type(error).__name__}: {error}")
        return pb_utils.TritonError(f"the encoder failed on this request: {error}", pb_utils.TritonError.INTERNAL)

    def execute(self, requests):
        results, errors, groups = {}, {}, {}
        wanted = [set(request.requested_output_names()) for request in requests]
        batches = {}
        for r, request in enumerate(requests):
            side, batch = self._read(request)
            if side is None:
                errors[r] = pb_utils.TritonError(batch, pb_utils.TritonError.INVALID_ARG)
            elif side in self.static:
                try:
                    results[r] = {"pooled_logits": static_vectors(self.static[side], *batch)}
                except Exception as e:  # noqa: BLE001 (this request alone fails)
                    errors[r] = self._failed(e)
            else:
                batches[r] = batch
                groups.setdefault(self.graph_of[side], []).append(r)
        for graph, members in groups.items():
            # Only what the ensembles of this execution map leaves the runtime:
            # BGE-M3's [n, L, hidden] ColBERT tensor only for <name>_colbert.
            union = set().union(*(wanted[r] for r in members))
            names = [n for n in self.graph_outputs if n in union]
            outputs = self.encoders[graph].run_isolated([batches[r] for r in members], names) if names else [{} for _ in members]
            for r, output in zip(members, outputs):
                if isinstance(output, Exception):
                    errors[r] = self._failed(output)
                else:
                    results[r] = output
        responses = []
        for r in range(len(requests)):
            if r in errors:
                responses.append(pb_utils.InferenceResponse(error=errors[r]))
                continue
            result, want = results[r], wanted[r]
            tensors = [pb_utils.Tensor(n, np.ascontiguousarray(result[n])) for n in self.graph_outputs if n in want]
            if "colbert_lengths" in want:
                mask = batches[r][1]
                lengths = np.maximum((mask != 0).sum(axis=1) - 1, 0).astype(np.int32)
                tensors.append(pb_utils.Tensor("colbert_lengths", lengths.reshape(-1, 1)))
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
        return responses
