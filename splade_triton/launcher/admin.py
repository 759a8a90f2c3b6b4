"""Triton's restricted APIs: the admin key, and a client for the model-repository API."""

from __future__ import annotations

import json
import re
import secrets
import urllib.request

# The admin key guards Triton's model-repository, shared-memory, trace and
# logging APIs on HTTP and gRPC; inference, health, metadata, model config and
# statistics stay open.
ADMIN_KEY_ENV = "SPLADE_ADMIN_KEY"
ADMIN_HEADER = "splade-admin-key"
# Triton prefixes the header it checks on gRPC.
GRPC_ADMIN_HEADER = f"triton-grpc-protocol-{ADMIN_HEADER}"
RESTRICTED_APIS = ("model-repository", "shared-memory", "trace", "logging")
KEY_CHARS = re.compile(r"^[A-Za-z0-9._~-]+$")  # no ':', ',' or '=' (flag syntax)


def new_key() -> str:
    return secrets.token_urlsafe(32)


def restricted_flags(key: str) -> list[str]:
    """tritonserver flags that put the restricted APIs behind ``key``."""
    if not KEY_CHARS.match(key):
        raise ValueError("the admin key may contain only letters, digits and . _ ~ -")
    restricted = f"{','.join(RESTRICTED_APIS)}:{ADMIN_HEADER}={key}"
    return [f"--http-restricted-api={restricted}", f"--grpc-restricted-protocol={restricted}"]


def client_host(host: str) -> str:
    """An address to reach a server bound to ``host`` from this machine."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


class Admin:
    """Triton's model-repository API (and open read APIs) over HTTP, sent with the admin key."""

    def __init__(self, host: str, port: int, key: str, timeout_s: float = 120.0):
        self.base = f"http://{client_host(host)}:{port}"
        self.key = key
        self.timeout_s = timeout_s

    def call(self, path: str, body: bytes | None = None) -> bytes:
        request = urllib.request.Request(
            self.base + path, data=body, method="GET" if body is None else "POST", headers={ADMIN_HEADER: self.key}
        )
        with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
            return response.read()

    def states(self) -> dict[str, str]:
        """Model name -> READY / LOADING / UNLOADING / UNAVAILABLE ('' if never loaded)."""
        return {m["name"]: m.get("state", "") for m in json.loads(self.call("/v2/repository/index", b"{}"))}

    def load(self, model: str, config: dict | None = None) -> None:
        """Load ``model``; with ``config``, (re)load it with that config instead of its file's."""
        body = {"parameters": {"config": json.dumps(config)}} if config is not None else {}
        self.call(f"/v2/repository/models/{model}/load", json.dumps(body).encode())

    def unload(self, model: str) -> None:
        self.call(f"/v2/repository/models/{model}/unload", b"{}")

    def config(self, model: str) -> dict:
        return json.loads(self.call(f"/v2/models/{model}/config"))

    def is_ensemble(self, model: str) -> bool:
        return self.config(model).get("platform") == "ensemble"

    def stats(self) -> dict[str, dict]:
        """Model name -> Triton's inference statistics of its (latest) version."""
        return {m["name"]: m for m in json.loads(self.call("/v2/models/stats"))["model_stats"]}

    def stub_count(self, model: str) -> int:
        """Python-backend stub processes the loaded ``model`` runs: one per instance."""
        config = self.config(model)
        if config.get("backend") != "python":
            return 0
        return sum(
            int(g.get("count", 1)) * max(1, len(g.get("gpus", [])) if g.get("kind") == "KIND_GPU" else 1)
            for g in config.get("instance_group", [])
        )
