"""Code that runs inside Triton's Python-backend models.

Imports nothing outside the served runtime (numpy, tokenizers, onnxruntime)
and nothing of the rest of the project: an assembled model repository carries
a copy of this package beside each model.py.
"""
