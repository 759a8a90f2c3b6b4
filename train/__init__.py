"""Fine-tuning sparse models on a user's domain, and measuring what it bought.

``python -m train``: train a SPLADE masked-LM directory on JSONL pairs
(:mod:`train.splade`), the output in the same layout, so that
``python -m export.export_onnx --model OUT`` takes it as is.
``python -m train.evaluate``: before/after retrieval quality, active terms,
and the pruning sweep (:mod:`train.evaluate`). ``python -m train.fixture``:
the real-text fixture of docs/finetuning.md (Python standard library
docstrings). ``python -m train.install``: export a trained directory into a
pipeline and reload that pipeline in a running server.
"""
