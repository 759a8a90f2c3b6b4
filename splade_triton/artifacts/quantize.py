"""Calibrated static int8 quantization of an exported encoder (NNCF, OpenVINO IR out).

NNCF's post-training quantization inserts int8 quantize/dequantize pairs on
the MatMuls' inputs and weights, with activation ranges measured on
calibration texts run through the fp32 graph (``model_type=TRANSFORMER``:
the attention's softmax / LayerNorm inputs stay float). The result is an
OpenVINO IR (``model.int8.xml`` + ``.bin``) that the encoder runs with
``runtime=openvino precision=int8``.

Calibration texts are drawn like the fidelity gate's varied texts but from
another seed, and never from the retrieval fixture the gate scores.
"""

from __future__ import annotations

from pathlib import Path

from splade_triton.artifacts.numerics import validation_texts
from splade_triton.serving.tokens import load_tokenizer, pad_ids

__all__ = ["calibration_batches", "quantize_int8"]


def calibration_batches(model_dir, count: int = 128, batch_size: int = 8, max_length: int = 512, seed: int = 1):
    """Feeds for NNCF: batches of ``batch_size`` texts (queries to ~600-word passages), padded per batch."""
    tokenizer = load_tokenizer(Path(model_dir) / "tokenizer.json", max_length)
    words = [w.lstrip("\u2581") for w in tokenizer.get_vocab()]
    texts = validation_texts(count, words, seed=seed)
    encodings = tokenizer.encode_batch(texts)
    encodings.sort(key=lambda e: len(e.ids))  # similar lengths together, as the encoder batches them
    feeds = []
    for start in range(0, len(encodings), batch_size):
        ids, mask = pad_ids(encodings[start: start + batch_size])
        feeds.append({"input_ids": ids, "attention_mask": mask})
    return feeds


def quantize_int8(onnx_path, output_xml, feeds, ignored_types=(), fast_bias_correction: bool = True) -> Path:
    """Quantize ``onnx_path`` with NNCF on ``feeds``; writes ``output_xml`` (+ .bin), fp32 weights elsewhere."""
    import nncf
    import openvino as ov

    model = ov.Core().read_model(str(onnx_path))
    quantized = nncf.quantize(
        model,
        nncf.Dataset(feeds),
        model_type=nncf.ModelType.TRANSFORMER,
        preset=nncf.QuantizationPreset.MIXED,
        subset_size=len(feeds),
        fast_bias_correction=fast_bias_correction,
        ignored_scope=nncf.IgnoredScope(types=list(ignored_types)) if ignored_types else None,
    )
    output_xml = Path(output_xml)
    output_xml.parent.mkdir(parents=True, exist_ok=True)
    # Written beside, then renamed: a reader never sees half a model.
    tmp = output_xml.with_name(output_xml.stem + ".tmp.xml")
    ov.save_model(quantized, str(tmp), compress_to_fp16=False)
    tmp.with_suffix(".bin").replace(output_xml.with_suffix(".bin"))
    tmp.replace(output_xml)
    return output_xml
