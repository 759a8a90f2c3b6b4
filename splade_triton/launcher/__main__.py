"""python -m splade_triton.launcher: serve a model repository (see server.main)."""

from splade_triton.launcher.server import main

main()
