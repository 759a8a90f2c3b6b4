"""The launcher's readiness endpoint: what a load balancer or Kubernetes' readinessProbe reads.

Triton's own /v2/health/ready can only be turned off by unloading models,
which model-control mode none forbids and which fails requests in explicit
mode. So the launcher answers on a port of its own: 200 while tritonserver is
ready and the launcher is not stopping, 503 from the moment it is told to stop
(while tritonserver still serves through the grace period).
"""

from __future__ import annotations

import socket
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from splade_triton.launcher.admin import client_host

READY_PATH = "/v2/health/ready"  # the same path as Triton's


def triton_ready(host: str, http_port: int, timeout_s: float = 2.0) -> bool:
    """Whether tritonserver's own /v2/health/ready answers 200."""
    try:
        with urllib.request.urlopen(f"http://{client_host(host)}:{http_port}{READY_PATH}", timeout=timeout_s) as r:
            return r.status == 200
    except OSError:
        return False


class Health:
    """``GET /v2/health/ready`` on ``host:port``: 200 "ready", or 503 with the reason.

    ``stopping`` is set by the launcher when it starts to stop. Binding happens
    in the constructor, so a port in use fails before tritonserver starts.
    """

    def __init__(self, host: str, port: int, ready=lambda: True):
        self.stopping = threading.Event()
        health = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                if self.path.split("?", 1)[0] != READY_PATH:
                    self._answer(404, "not found")
                elif health.stopping.is_set():
                    self._answer(503, "stopping")
                elif not ready():
                    self._answer(503, "tritonserver not ready")
                else:
                    self._answer(200, "ready")

            def _answer(self, status: int, text: str) -> None:
                body = f"{text}\n".encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):  # a probe every few seconds: no log line each
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

        self.server = Server((host, port), Handler)
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, name="health", daemon=True)

    def start(self) -> "Health":
        self._thread.start()
        return self

    def close(self) -> None:
        if self._thread.is_alive():
            self.server.shutdown()
        self.server.server_close()
