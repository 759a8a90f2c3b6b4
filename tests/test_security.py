"""A network client without the admin key can infer, and nothing more.

Model loading / unloading, shared-memory registration, trace and log settings
are Triton's restricted APIs, opened only by the launcher's key (header
``splade-admin-key``, ``triton-grpc-protocol-splade-admin-key`` on gRPC).
The server binds 127.0.0.1, and texts never reach its log.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import uuid

import pytest
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import InferenceServerException

from splade_triton.launcher.admin import ADMIN_HEADER, GRPC_ADMIN_HEADER
from tests import triton
from tests.conftest import Server, running

QUERY = "what is the capital of france"


@pytest.fixture(params=["http", "grpc"])
def protocol(request):
    return request.param


def admin_headers(protocol: str, key: str) -> dict[str, str]:
    return {GRPC_ADMIN_HEADER if protocol == "grpc" else ADMIN_HEADER: key}


def assert_refused(e: InferenceServerException) -> None:
    assert e.status() in ("403", "StatusCode.UNAVAILABLE"), e
    assert "restricted" in e.message() and ADMIN_HEADER in e.message(), e


def assert_serving(protocol, server):
    c = triton.client(protocol, server)
    assert c.is_server_ready() and c.is_model_ready("splade")
    out = triton.encode(protocol, c, [QUERY], outputs=("tokens",))
    assert out["tokens"][0, :2].tolist() == [b"capital", b"france"]


# --- binding -------------------------------------------------------------------


def _address(hex_address: str) -> str:
    raw = bytes.fromhex(hex_address)
    if len(raw) == 4:
        return str(ipaddress.IPv4Address(raw[::-1]))
    v6 = ipaddress.IPv6Address(b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4)))
    return str(v6.ipv4_mapped or v6)


def listening_addresses(pid: int) -> set[tuple[str, int]]:
    """(address, port) of the TCP sockets process ``pid`` listens on; v4-mapped IPv6 as IPv4."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = set()
    for table in ("tcp", "tcp6"):
        with open(f"/proc/{pid}/net/{table}") as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                local, state, inode = fields[1], fields[3], fields[9]
                if state == "0A" and inode in inodes:  # LISTEN
                    address, port = local.split(":")
                    found.add((_address(address), int(port, 16)))
    return found


def test_listens_on_127_0_0_1_only(server):
    addresses = listening_addresses(server.tritonserver_pid())
    ports = {server.http_port, server.grpc_port, server.metrics_port}
    assert ports <= {port for _, port in addresses}
    assert {address for address, _ in addresses} == {"127.0.0.1"}


# --- restricted APIs -------------------------------------------------------------


@pytest.mark.parametrize("action", ["load", "unload", "index"])
def test_no_model_loading_or_unloading_without_the_key(protocol, server, action):
    c = triton.client(protocol, server)
    calls = {
        "load": lambda headers: c.load_model("splade_encoder", headers=headers),
        "unload": lambda headers: c.unload_model("splade_encoder", headers=headers),
        "index": lambda headers: c.get_model_repository_index(headers=headers),
    }
    assert_refused(triton.error_of(lambda: calls[action](None)))
    assert_refused(triton.error_of(lambda: calls[action](admin_headers(protocol, "not-the-key"))))
    assert_serving(protocol, server)


def test_the_key_opens_the_repository_api(protocol, server):
    c = triton.client(protocol, server)
    index = c.get_model_repository_index(headers=admin_headers(protocol, server.admin_key))
    names = [m["name"] for m in index] if protocol == "http" else [m.name for m in index.models]
    assert {"splade_tokenizer", "splade_encoder", "splade_sparsify", "splade", "splade_embedding"} <= set(names)


def test_no_shared_memory_registration_without_the_key(protocol, server):
    c = triton.client(protocol, server)
    name, key = f"probe-{uuid.uuid4().hex[:8]}", f"/splade-test-{uuid.uuid4().hex[:8]}"
    handle = shm.create_shared_memory_region(name, key, 64)
    try:
        assert_refused(triton.error_of(lambda: c.register_system_shared_memory(name, key, 64)))
        assert_refused(triton.error_of(lambda: c.get_system_shared_memory_status()))
        assert_refused(triton.error_of(lambda: c.unregister_system_shared_memory()))
    finally:
        shm.destroy_shared_memory_region(handle)
    assert_serving(protocol, server)


def test_no_trace_or_log_settings_without_the_key(protocol, server):
    c = triton.client(protocol, server)
    assert_refused(triton.error_of(lambda: c.update_log_settings({"log_verbose_level": 1})))
    assert_refused(triton.error_of(lambda: c.get_log_settings()))
    assert_refused(triton.error_of(lambda: c.update_trace_settings(settings={"trace_level": ["TIMESTAMPS"]})))
    assert_refused(triton.error_of(lambda: c.get_trace_settings()))
    assert_serving(protocol, server)


def test_inference_needs_no_key(protocol, server):
    c = triton.client(protocol, server)
    assert c.is_server_live() and c.get_server_metadata()
    out = triton.encode(protocol, c, [QUERY], outputs=("indices", "values"))
    assert out["indices"].shape[0] == 1


def test_model_control_none_refuses_loading_even_with_the_key(repository, tmp_path):
    server = Server(repository, tmp_path / "server.log", launcher_args=("--model-control-mode", "none"))
    try:
        server.wait_ready()
        for protocol in ("http", "grpc"):
            c = triton.client(protocol, server)
            e = triton.error_of(lambda: c.unload_model("splade_encoder", headers=admin_headers(protocol, server.admin_key)))
            assert "not allowed" in e.message(), e
            assert_serving(protocol, server)
            c.close()  # in this mode tritonserver itself waits for open HTTP connections on exit
    finally:
        assert server.stop() == 0


# --- logs ----------------------------------------------------------------------


@pytest.fixture(scope="module", params=[0, 1], ids=["log-verbose-0", "log-verbose-1"])
def logging_server(request, repository, tmp_path_factory):
    """The server at the default log level, and one started with ``--log-verbose 1``."""
    if request.param == 0:
        yield request.getfixturevalue("server"), 0
        return
    log = tmp_path_factory.mktemp("verbose") / "server.log"
    with running(repository, log, launcher_args=("--log-verbose", str(request.param))) as srv:
        yield srv, request.param


def assert_texts_never_logged(server, level: int):
    """Good and bad requests carrying a distinctive text: the log never holds it, nor its hex."""
    marker = f"secret{secrets.token_hex(8)}"
    for protocol in ("http", "grpc"):
        c = triton.client(protocol, server)
        triton.encode(protocol, c, [f"{marker} good text"], outputs=("tokens",))
        triton.encode(protocol, c, [f"{marker} as a query"], outputs=("tokens",), parameters={"input_type": "query"})
        bad = [
            lambda: c.infer("splade", [triton.text_input(protocol, [f"{marker} \xe9".encode("latin-1")])]),
            lambda: triton.encode(protocol, c, [marker + "x" * 70000]),
            lambda: triton.encode(protocol, c, [marker], parameters={"top_k": -1}),
            lambda: triton.encode(protocol, c, [marker], parameters={f"top_k_{marker}": 1}),  # a misspelt name
            lambda: c.infer("splade", [triton.text_input(protocol, [marker], name="query")]),
        ]
        for call in bad:
            triton.error_of(call)
    # Flush: the server writes its log as it goes; a further request orders it.
    triton.encode("grpc", triton.client("grpc", server), [QUERY])
    log = server.log()
    # The level took effect: tritonserver's verbose lines are there at 1 and only at 1.
    assert ('"HTTP request:' in log) == (level >= 1), f"the log is not at --log-verbose {level}"
    assert marker not in log, f"a text reached the log at --log-verbose {level}"
    assert marker.encode().hex() not in log, f"a text reached the log (in hex) at --log-verbose {level}"


def test_texts_never_reach_the_log(logging_server):
    assert_texts_never_logged(*logging_server)


def test_unknown_parameter_names_are_echoed_only_to_the_caller(server):
    """The error names a misspelt parameter for the caller; the log keeps nothing of it."""
    marker = f"top_k_param{secrets.token_hex(6)}"  # resembles top_k: refused, not ignored
    c = triton.client("grpc", server)
    e = triton.error_of(lambda: triton.encode("grpc", c, [QUERY], parameters={marker: 1}))
    assert marker in e.message()
    assert marker not in server.log()
