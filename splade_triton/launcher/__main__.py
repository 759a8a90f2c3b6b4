"""python -m splade_triton.launcher: serve a model repository, or `check` one (see serve.main)."""

from splade_triton.launcher.serve import main

main()
