"""The process around tritonserver: find and start it, supervise its Python-backend stubs, drain on stop."""
