"""The clients: a pipeline's Triton ensembles over HTTP or gRPC, asyncio or blocking.

:class:`AsyncSpladeClient` (``splade`` pipelines: sparse vectors) and
:class:`AsyncBgeM3Client` (``bge_m3`` pipelines: dense, lexical weights and
ColBERT vectors) share one implementation of the connection, retries, chunking
and health check (``_AsyncClient``, on tritonclient's asyncio clients
``tritonclient.grpc.aio`` / ``tritonclient.http.aio``). :class:`SpladeClient`
and :class:`BgeM3Client` are the same clients for blocking code, running the
asyncio one on an event loop of its own in a background thread (so they also
work where the caller's thread already runs a loop, e.g. a notebook).

Large inputs are cut into requests of at most ``batch_size`` texts (the model
takes at most 64 per request) and ``max_request_bytes`` bytes (the server's
limit on a request's texts together), and sent with at most ``max_in_flight``
requests outstanding: enough concurrent requests for Triton's dynamic batcher to merge,
never the whole corpus at once. Results come back in input order.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ipaddress
import itertools
import logging
import numbers
import random
import re
import threading
import time
import weakref
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, overload

import numpy as np
import scipy.sparse
from tritonclient.utils import InferenceServerException

from .errors import (
    InvalidRequestError,
    ModelNotFoundError,
    ProtocolError,
    RequestTimeoutError,
    ServerError,
    ServerUnavailableError,
    SpladeError,
)
from .formats import SparseVector, to_csr
from .m3 import M3Embedding, score_pairs

__all__ = [
    "DEFAULT_URL",
    "INPUT_TYPES",
    "MAX_BATCH_SIZE",
    "MAX_REQUEST_BYTES",
    "AsyncBgeM3Client",
    "AsyncSpladeClient",
    "BgeM3Client",
    "Endpoint",
    "Health",
    "SpladeClient",
    "batched",
    "parse_url",
    "parse_urls",
]

log = logging.getLogger(__name__)

DEFAULT_URL = "grpc://127.0.0.1:8001"
DEFAULT_PORTS = {"http": 8000, "grpc": 8001}
# The ``splade`` ensemble's max_batch_size: texts per request.
MAX_BATCH_SIZE = 64
# The tokenizer's max_request_bytes: UTF-8 bytes of a request's texts together.
MAX_REQUEST_BYTES = 1_048_576

T = TypeVar("T")


@dataclass(frozen=True)
class Endpoint:
    """Where the server is: ``protocol`` (``http`` or ``grpc``) and ``host:port``."""

    protocol: str
    address: str

    def __str__(self) -> str:
        return self.address if self.address.startswith(GRPC_TARGETS) else f"{self.protocol}://{self.address}"


# gRPC's own resolver: every address of a DNS name, requests spread over them
# (round_robin), the name resolved again when a connection fails. For a
# Kubernetes headless Service, whose name resolves to every ready pod.
DNS_SCHEME = "dns:///"
# gRPC's static lists (ipv4:host:port,host:port): the same round_robin over given addresses.
ADDRESS_LISTS = ("ipv4:", "ipv6:")
GRPC_TARGETS = (DNS_SCHEME, *ADDRESS_LISTS)
# In a comma-separated --url, an address list runs to the end (its own commas are its addresses).
_ADDRESS_LIST_TAIL = re.compile(r"(?:^|,)\s*(ipv[46]:.*)$", re.IGNORECASE | re.DOTALL)


def parse_url(url: str, protocol: str | None = None) -> Endpoint:
    """``grpc://host:port``, ``http://host:port``, ``dns:///host[:port]`` (gRPC, every address of
    the name, round-robin per request), ``ipv4:host:port,host:port`` / ``ipv6:[addr]:port,...``
    (gRPC, the same over the addresses listed), or ``host[:port]`` with ``protocol`` (default gRPC).

    A missing port is the protocol's default (HTTP 8000, gRPC 8001).
    """
    text = url.strip()
    if protocol is not None and protocol not in DEFAULT_PORTS:
        raise ValueError(f"protocol must be 'http' or 'grpc', got {protocol!r}")
    if text.lower().startswith(DNS_SCHEME):
        if protocol == "http":
            raise ValueError(f"URL {url!r} is a gRPC name (dns:///); HTTP was asked for")
        return Endpoint("grpc", DNS_SCHEME + parse_url(text[len(DNS_SCHEME):], "grpc").address)
    scheme = next((s for s in ADDRESS_LISTS if text.lower().startswith(s)), None)
    if scheme is not None:
        if protocol == "http":
            raise ValueError(f"URL {url!r} is a gRPC address list ({scheme}); HTTP was asked for")
        addresses = [parse_url(a, "grpc").address for a in text[len(scheme):].split(",") if a.strip()]
        for address in addresses:  # gRPC takes IP literals only, IPv6 ones in brackets
            host = address.rpartition(":")[0]
            try:
                if scheme == "ipv4:":
                    ipaddress.IPv4Address(host)
                elif host.startswith("[") and host.endswith("]"):
                    ipaddress.IPv6Address(host[1:-1])
                else:
                    raise ValueError
            except ValueError:
                example = "127.0.0.1:8001" if scheme == "ipv4:" else "[::1]:8001"
                raise ValueError(f"{scheme} lists addresses such as {example}; got {host!r} in {url!r}") from None
        if not addresses:
            raise ValueError(f"an address list is {scheme}address:port[,address:port...]; got {url!r}")
        return Endpoint("grpc", scheme + ",".join(addresses))
    if "://" in text:
        scheme, text = text.split("://", 1)
        scheme = scheme.lower()
        if scheme not in DEFAULT_PORTS:
            raise ValueError(f"unsupported URL scheme {scheme!r} in {url!r}: use http:// or grpc://")
        if protocol is not None and protocol != scheme:
            raise ValueError(f"URL {url!r} says {scheme} but protocol {protocol!r} was asked for")
        protocol = scheme
    protocol = protocol or "grpc"
    text = text.rstrip("/")
    if not text or "/" in text:
        raise ValueError(f"a server URL is [http:// or grpc://]host[:port], without a path; got {url!r}")
    host, sep, port = text.rpartition(":")
    if not sep or "]" in port:  # no port, or the tail of an IPv6 literal
        host, port = text, str(DEFAULT_PORTS[protocol])
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"a server URL is [http:// or grpc://]host[:port]; got {url!r}")
    return Endpoint(protocol, f"{host}:{int(port)}")


def parse_urls(urls: str | Sequence[str], protocol: str | None = None) -> list[Endpoint]:
    """One or more servers (replicas of one service): a URL, a comma-separated list, or a
    sequence of either; each as :func:`parse_url` (a gRPC address list, ``ipv4:...``, last in
    its string). Repeated ones are kept once."""
    parts = [urls] if isinstance(urls, str) else list(urls)
    endpoints = [parse_url(u, protocol) for part in parts for u in _split_urls(part) if u.strip()]
    if not endpoints:
        raise ValueError("no server URL given")
    return list(dict.fromkeys(endpoints))


def _split_urls(text: str) -> list[str]:
    tail = _ADDRESS_LIST_TAIL.search(text)
    return text.split(",") if tail is None else [*text[:tail.start()].split(","), tail.group(1)]


@dataclass(frozen=True)
class Health:
    """What :meth:`AsyncSpladeClient.health` found."""

    url: str
    live: bool
    ready: bool
    model: str
    model_ready: bool
    version: str | None = None
    probe_ms: float | None = None  # one real one-text inference, when the model said it was ready
    error: str | None = None  # why the probe failed

    @property
    def ok(self) -> bool:
        """Server live and ready, model ready, and a real inference answered."""
        return self.live and self.ready and self.model_ready and self.error is None and self.probe_ms is not None


def _parameters(top_k: int | None, min_weight: float | None, **text: str | None) -> dict[str, Any] | None:
    # tritonclient sends only Python bool/int/float/str: unwrap numpy scalars.
    # Values are otherwise passed as given: the server validates them and its
    # INVALID_ARG message is the one to show. ``text``: input_type, overflow,
    # truncation_direction (the tokenizer's), sent when given.
    params: dict[str, Any] = {name: value for name, value in text.items() if value is not None}
    if top_k is not None:
        params["top_k"] = int(top_k) if isinstance(top_k, numbers.Integral) and not isinstance(top_k, bool) else top_k
    if min_weight is not None:
        params["min_weight"] = (float(min_weight) if isinstance(min_weight, numbers.Real)
                                and not isinstance(min_weight, bool) else min_weight)
    return params or None


def _text_bytes(text: str | bytes) -> bytes:
    if isinstance(text, str):
        return text.encode("utf-8")
    if isinstance(text, bytes):
        return text
    raise TypeError(f"texts must be str (or UTF-8 bytes), got {type(text).__name__}")


def batched(items: Iterable[T], max_items: int, max_bytes: int | None = None,
            size: Callable[[T], int] = len) -> Iterator[list[T]]:
    """Consecutive runs of ``items``: at most ``max_items`` each, and at most
    ``max_bytes`` by ``size`` together (an item larger than that goes alone)."""
    batch: list[T] = []
    total = 0
    for item in items:
        n = size(item) if max_bytes is not None else 0
        if batch and (len(batch) >= max_items or (max_bytes is not None and total + n > max_bytes)):
            yield batch
            batch, total = [], 0
        batch.append(item)
        total += n
    if batch:
        yield batch


def _rows_to_vectors(indices: np.ndarray, values: np.ndarray, tokens: np.ndarray | None) -> list[SparseVector]:
    vectors = []
    for r in range(indices.shape[0]):
        keep = indices[r] >= 0  # -1 pads rows shorter than the request's longest
        toks = None
        if tokens is not None:
            toks = tuple(t.decode("utf-8", "replace") if isinstance(t, bytes) else str(t) for t in tokens[r][keep])
        vectors.append(SparseVector(indices[r][keep], values[r][keep], toks))
    return vectors


def _retrieve(task: asyncio.Task) -> None:
    # A task abandoned (after an earlier failure, or given up) must not log "exception never retrieved".
    if not task.cancelled():
        task.exception()


class _Transport:
    """One tritonclient asyncio client, and what its errors mean."""

    def __init__(self, endpoint: Endpoint, timeout: float, connections: int, headers: dict[str, str] | None):
        self.endpoint = endpoint
        self.timeout = timeout
        self.headers = headers
        if endpoint.protocol == "grpc":
            import tritonclient.grpc.aio as module
            from tritonclient.grpc import KeepAliveOptions

            keepalive = KeepAliveOptions()
            self.module = module
            self.client = module.InferenceServerClient(endpoint.address, channel_args=[
                ("grpc.max_send_message_length", 2**31 - 1),
                ("grpc.max_receive_message_length", 2**31 - 1),
                ("grpc.keepalive_time_ms", keepalive.keepalive_time_ms),
                ("grpc.keepalive_timeout_ms", keepalive.keepalive_timeout_ms),
                ("grpc.keepalive_permit_without_calls", keepalive.keepalive_permit_without_calls),
                ("grpc.http2.max_pings_without_data", keepalive.http2_max_pings_without_data),
                # gRPC's own reconnect backoff grows to 120 s by default: a server
                # that comes up later would be seen long after our retries ended.
                ("grpc.initial_reconnect_backoff_ms", 250),
                ("grpc.min_reconnect_backoff_ms", 250),
                ("grpc.max_reconnect_backoff_ms", 2000),
                # Over a name's or a list's addresses, per request (the default, pick_first, uses one).
                *([("grpc.lb_policy_name", "round_robin")] if endpoint.address.startswith(GRPC_TARGETS) else []),
            ])
        else:
            import tritonclient.http.aio as module

            self.module = module
            self.client = module.InferenceServerClient(endpoint.address, conn_limit=connections, conn_timeout=timeout)

    def _kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"headers": self.headers}
        if self.endpoint.protocol == "grpc":
            # The deadline travels to the server too.
            kwargs["client_timeout"] = self.timeout
        return kwargs

    async def infer(self, model: str, texts: Sequence[str | bytes], outputs: Sequence[str],
                    parameters: dict[str, Any] | None) -> dict[str, np.ndarray]:
        data = np.array([[_text_bytes(t)] for t in texts], dtype=object).reshape(-1, 1)
        text = self.module.InferInput("text", list(data.shape), "BYTES")
        text.set_data_from_numpy(data)
        result = await self.client.infer(
            model, [text], outputs=[self.module.InferRequestedOutput(n) for n in outputs],
            parameters=parameters, **self._kwargs())
        return {n: result.as_numpy(n) for n in outputs}

    async def live(self) -> bool:
        return bool(await self.client.is_server_live(**self._kwargs()))

    async def ready(self) -> bool:
        return bool(await self.client.is_server_ready(**self._kwargs()))

    async def model_ready(self, model: str) -> bool:
        return bool(await self.client.is_model_ready(model, **self._kwargs()))

    async def metadata(self, model: str) -> dict[str, Any]:
        if self.endpoint.protocol == "grpc":
            return await self.client.get_model_metadata(model, as_json=True, **self._kwargs())
        return await self.client.get_model_metadata(model, headers=self.headers)

    async def version(self) -> str | None:
        if self.endpoint.protocol == "grpc":
            meta = await self.client.get_server_metadata(as_json=True, **self._kwargs())
        else:
            meta = await self.client.get_server_metadata(headers=self.headers)
        return meta.get("version")

    async def close(self) -> None:
        await self.client.close()

    def error(self, exc: BaseException, model: str) -> SpladeError:
        """The client's exception for what tritonclient / the transport raised."""
        url = str(self.endpoint)
        if isinstance(exc, SpladeError):
            return exc
        if isinstance(exc, InferenceServerException):
            status = exc.status()
            message = exc.message() or str(exc)
            code = (status or "").removeprefix("StatusCode.")
            if code in ("INVALID_ARGUMENT", "400"):
                return InvalidRequestError(message, status=status, url=url)
            if code in ("UNAVAILABLE", "503"):
                return ServerUnavailableError(f"cannot reach the server at {url}: {message}", status=status, url=url)
            if code in ("NOT_FOUND", "404"):
                return ModelNotFoundError(f"the server at {url} does not serve model {model!r}: {message}",
                                          status=status, url=url)
            if code in ("DEADLINE_EXCEEDED", "504"):
                return RequestTimeoutError(f"no answer from {url} within {self.timeout:g} s", status=status, url=url)
            return ServerError(f"server error at {url} ({status}): {message}", status=status, url=url)
        if isinstance(exc, asyncio.TimeoutError):
            return RequestTimeoutError(f"no answer from {url} within {self.timeout:g} s", url=url)
        if self.endpoint.protocol == "http":
            import aiohttp

            if isinstance(exc, aiohttp.ClientResponseError):
                return ProtocolError(f"{url} did not answer as a Triton HTTP endpoint (is it the gRPC port?)",
                                     url=url)
            if isinstance(exc, aiohttp.ClientError):
                return ServerUnavailableError(f"cannot reach the server at {url}: {exc}", url=url)
        if isinstance(exc, OSError):
            return ServerUnavailableError(f"cannot reach the server at {url}: {exc}", url=url)
        return ServerError(f"unexpected error talking to {url}: {type(exc).__name__}: {exc}", url=url)


class _AsyncClient:
    """What every pipeline's asyncio client shares: the connection, retries, chunking, health.

    ``url``: ``grpc://host:port`` or ``http://host:port`` (or ``host:port`` and
    ``protocol``), or several replicas of the service: a comma-separated list or
    a sequence of URLs, over which requests are spread round-robin, with
    failover (below); ``dns:///host:port`` lets gRPC spread them over every
    address of a name (a Kubernetes headless Service). ``model``: the pipeline's ensemble (each client kind has its
    default). ``batch_size``: texts per request (the model's limit is 64).
    ``max_request_bytes``: UTF-8 bytes of one request's texts together (the
    server's own limit; None: no limit). ``max_in_flight``: requests
    outstanding at once. ``timeout``: seconds per
    request. ``retries``, ``backoff``, ``max_backoff``: a request that could not
    reach the server, or was answered UNAVAILABLE, is retried up to ``retries``
    times after exponential backoff with jitter (``backoff * 2**attempt`` seconds,
    at most ``max_backoff``); no other error is retried. With several
    servers, a failed request first goes at once to each other server not yet
    tried (also after NOT_FOUND or a server error, which can be one replica's
    own: stopping, or a dead stub), and a server that failed is left out for a
    while (the same backoff); only then does a retry wait. A server that lets a
    request's ``timeout`` pass (hung: it accepts connections and never answers)
    is such a failure too (requests are idempotent): the other requests waiting
    on it give up at once and go elsewhere, and it gets no request until it
    answers a probe (one text, in the background, once per backoff).
    """

    DEFAULT_MODEL = "splade"

    def __init__(self, url: str | Sequence[str] = DEFAULT_URL, *, protocol: str | None = None, model: str | None = None,
                 batch_size: int = MAX_BATCH_SIZE, max_request_bytes: int | None = MAX_REQUEST_BYTES,
                 max_in_flight: int = 4, timeout: float = 60.0,
                 retries: int = 4, backoff: float = 0.25, max_backoff: float = 4.0,
                 headers: dict[str, str] | None = None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if max_request_bytes is not None and max_request_bytes < 1:
            raise ValueError(f"max_request_bytes must be >= 1 or None, got {max_request_bytes}")
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight}")
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0, got {timeout}")
        if retries < 0 or backoff < 0 or max_backoff < 0:
            raise ValueError("retries, backoff and max_backoff must be >= 0")
        self.endpoints = parse_urls(url, protocol)
        self.endpoint = self.endpoints[0]
        self.model = model or self.DEFAULT_MODEL
        self.batch_size = batch_size
        self.max_request_bytes = max_request_bytes
        self.max_in_flight = max_in_flight
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.headers = headers
        self._transports: dict[Endpoint, _Transport] = {}
        self._turn = itertools.count()
        self._down: dict[Endpoint, tuple[float, int]] = {}  # left out until, failures in a row
        self._hung: dict[Endpoint, asyncio.Task] = {}  # let a deadline pass: its probe, until it answers
        self._alarms: dict[Endpoint, asyncio.Future] = {}  # set when the server is found hung

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r}, model={self.model!r})"

    @property
    def url(self) -> str:
        return ",".join(str(e) for e in self.endpoints)

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connection (the client can be used again: it reconnects)."""
        probes, self._hung, self._alarms = self._hung, {}, {}
        for probe in probes.values():
            probe.cancel()
        await asyncio.gather(*probes.values(), return_exceptions=True)
        transports, self._transports = self._transports, {}
        for transport in transports.values():
            await transport.close()

    def _client(self, endpoint: Endpoint) -> _Transport:
        # Created on first use, inside the running loop: grpc.aio channels and
        # aiohttp sessions belong to the loop they were made on.
        if endpoint not in self._transports:
            self._transports[endpoint] = _Transport(endpoint, self.timeout, self.max_in_flight, self.headers)
        return self._transports[endpoint]

    def _untried(self, tried: set[Endpoint]) -> list[Endpoint]:
        # A hung server waits for its probe, not for requests.
        return [e for e in self.endpoints if e not in tried and e not in self._hung]

    def _pick(self, tried: set[Endpoint]) -> Endpoint:
        """The next server, round-robin, among those not ``tried`` for this request, not hung and
        not left out after a failure; if every one is, the one left out the shortest."""
        now = time.monotonic()
        fresh = self._untried(tried) or self.endpoints
        up = [e for e in fresh if self._down.get(e, (0.0, 0))[0] <= now]
        choices = up or [min(fresh, key=lambda e: self._down[e][0])]
        return choices[next(self._turn) % len(choices)]

    def _failed(self, endpoint: Endpoint) -> None:
        failures = min(self._down.get(endpoint, (0.0, 0))[1] + 1, 30)  # 2**failures stays a float
        self._down[endpoint] = (time.monotonic() + min(self.max_backoff, self.backoff * 2**failures), failures)

    def _hang(self, endpoint: Endpoint) -> None:
        """``endpoint`` let a deadline pass: the requests waiting on it give up now, and it is left
        out until a probe answers."""
        if endpoint in self._hung:  # already found (by the request that gave these up): probed
            return
        alarm = self._alarms.pop(endpoint, None)
        if alarm is not None:
            alarm.set_result(None)
        self._failed(endpoint)
        self._hung[endpoint] = asyncio.ensure_future(self._probe(endpoint))
        log.warning("%s is left out until it answers a probe", endpoint)

    async def _probe(self, endpoint: Endpoint) -> None:
        # A real inference: a wedged model can still say live and ready.
        try:
            while True:
                await asyncio.sleep(max(0.0, self._down.get(endpoint, (0.0, 0))[0] - time.monotonic()))
                try:
                    await asyncio.wait_for(self._probe_request(self._client(endpoint)), self.timeout)
                    break
                except Exception:  # noqa: BLE001 - whatever it was, not answered: still out
                    self._failed(endpoint)
        finally:
            self._hung.pop(endpoint, None)
        self._down.pop(endpoint, None)
        log.info("%s answered a probe: back in the rotation", endpoint)

    def _probe_request(self, transport: _Transport) -> Awaitable[dict[str, np.ndarray]]:
        """One real one-text inference: whether a server answers."""
        return transport.infer(self.model, ["health check"], ("indices",), {"top_k": 1})

    async def _within_deadline(self, endpoint: Endpoint, request: Awaitable[T]) -> T:
        """``request`` within the timeout, or given up as soon as another request finds ``endpoint`` hung."""
        task = asyncio.ensure_future(request)
        task.add_done_callback(_retrieve)
        alarm = self._alarms.get(endpoint)
        if alarm is None:
            alarm = self._alarms[endpoint] = asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait((task, alarm), timeout=self.timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            task.cancel()  # nothing once it is done
        if task.done():
            return task.result()
        if alarm.done():
            raise RequestTimeoutError(f"gave up on {endpoint}: another request found it hung", url=str(endpoint))
        raise asyncio.TimeoutError

    async def _call(self, fn: Callable[[_Transport], Awaitable[T]], retries: int | None = None) -> T:
        """``fn(transport)`` within the timeout, on the next server; failed over to the
        servers not yet tried, then retried (unreachable / UNAVAILABLE only) after a backoff."""
        retries = self.retries if retries is None else retries
        tried: set[Endpoint] = set()
        attempt = 0
        while True:
            endpoint = self._pick(tried)
            transport = self._client(endpoint)
            try:
                result = await self._within_deadline(endpoint, fn(transport))
                self._down.pop(endpoint, None)
                return result
            except Exception as exc:  # noqa: BLE001 - sorted into the client's errors just below
                error = transport.error(exc, self.model)
                tried.add(endpoint)
                # Not retried: the request's own fault, or a deadline (it may still be running);
                # but with other servers to go to, a deadline says this one is hung.
                hung = isinstance(error, RequestTimeoutError) and len(self.endpoints) > 1
                replica_fault = hung or error.retryable or isinstance(error, (ModelNotFoundError, ServerError))
                if hung:
                    self._hang(endpoint)
                elif replica_fault:
                    self._failed(endpoint)
                if replica_fault and self._untried(tried):
                    log.warning("%s; trying another server", error)
                    continue
                if not error.retryable or attempt >= retries:
                    raise error from exc
                delay = min(self.max_backoff, self.backoff * 2**attempt)
                delay = random.uniform(delay / 2, delay)
                attempt += 1
                log.warning("%s; retry %d/%d in %.2f s", error, attempt, retries, delay)
                tried.clear()
                await asyncio.sleep(delay)

    async def _infer(self, texts: Sequence[str | bytes], outputs: Sequence[str],
                     parameters: dict[str, Any] | None, model: str | None = None) -> dict[str, np.ndarray]:
        model = model or self.model
        result = await self._call(lambda t: t.infer(model, texts, outputs, parameters))
        rows = {name: array.shape[0] for name, array in result.items()}
        if any(n != len(texts) for n in rows.values()):
            raise ServerError(f"the server answered {rows} rows for {len(texts)} texts", url=self.url)
        return result

    async def _stream(self, texts: Iterable[str | bytes], **options: Any) -> AsyncIterator[Any]:
        """One result per text, in order, through the subclass's ``encode_batches``
        (texts read lazily, one request's worth at a time)."""
        agen = self.encode_batches(((None, chunk) for chunk in self._requests(texts)), **options)
        try:
            async for _, results in agen:
                for result in results:
                    yield result
        finally:
            await agen.aclose()

    def _requests(self, texts: Iterable[str | bytes]) -> Iterator[list[bytes]]:
        # Cut by count and by bytes: 64 long texts can exceed the server's max_request_bytes.
        return batched(map(_text_bytes, texts), self.batch_size, self.max_request_bytes)

    async def _pipeline(self, batches: Iterable[tuple[T, Sequence[str | bytes]]],
                        request: Callable[[Sequence[str | bytes]], Awaitable[Any]]) -> AsyncIterator[tuple[T, Any]]:
        pending: deque[tuple[T, asyncio.Task]] = deque()

        try:
            for tag, texts in batches:
                if not 0 < len(texts) <= self.batch_size:
                    raise ValueError(f"a batch holds 1 to {self.batch_size} texts, got {len(texts)}")
                task = asyncio.ensure_future(request(texts))
                task.add_done_callback(_retrieve)
                pending.append((tag, task))
                # The oldest first: order kept, at most max_in_flight outstanding.
                if len(pending) >= self.max_in_flight:
                    tag0, task0 = pending.popleft()
                    yield tag0, await task0
            while pending:
                tag0, task0 = pending.popleft()
                yield tag0, await task0
        finally:
            for _, task in pending:
                task.cancel()

    async def health(self, probe: bool = True) -> Health:
        """Server liveness and readiness, model readiness, and (``probe``) one real inference.

        Not retried. Raises :class:`ServerUnavailableError` when nothing answers.
        A model can say ready while unable to answer (a dead Python-backend stub),
        hence the probe.
        """
        live = await self._call(lambda t: t.live(), retries=0)
        ready = await self._call(lambda t: t.ready(), retries=0)
        model_ready = await self._call(lambda t: t.model_ready(self.model), retries=0)
        version = await self._call(lambda t: t.version(), retries=0)
        probe_ms = error = None
        if probe and model_ready:
            start = time.perf_counter()
            try:
                await self._call(self._probe_request, retries=0)
                probe_ms = (time.perf_counter() - start) * 1000
            except SpladeError as exc:
                error = str(exc)
        return Health(self.url, live, ready, self.model, model_ready, version, probe_ms, error)

    async def model_outputs(self) -> list[str]:
        """The names of the model's outputs, from its metadata (what kind of pipeline it is)."""
        meta = await self._call(lambda t: t.metadata(self.model))
        return [o["name"] for o in meta.get("outputs", [])]


class AsyncSpladeClient(_AsyncClient):
    """Encode texts with the ``splade`` model of a Triton server, from asyncio code.

    Arguments: see :class:`_AsyncClient` (``model`` defaults to ``splade``).

    >>> async with AsyncSpladeClient("grpc://127.0.0.1:8001") as client:
    ...     vectors = await client.encode(["what is the capital of france"], top_k=8)
    """

    DEFAULT_MODEL = "splade"
    _vocab_size: int | None = None

    @property
    def embedding_model(self) -> str:
        """The pipeline's ensemble for vocabulary-wide vectors: ``<model>_embedding``."""
        return f"{self.model}_embedding"

    async def _encode_chunk(self, texts: Sequence[str | bytes], parameters: dict[str, Any] | None,
                            return_tokens: bool) -> list[SparseVector]:
        # Only what is needed travels back: `embedding` is vocab floats per text.
        outputs = ("indices", "values", "tokens") if return_tokens else ("indices", "values")
        result = await self._infer(texts, outputs, parameters)
        return _rows_to_vectors(result["indices"], result["values"], result.get("tokens"))


    async def encode_batches(self, batches: Iterable[tuple[T, Sequence[str | bytes]]], *,
                             top_k: int | None = None, min_weight: float | None = None,
                             return_tokens: bool = False, input_type: str | None = None,
                             overflow: str | None = None) -> AsyncIterator[tuple[T, list[SparseVector]]]:
        """Stream ``(tag, vectors)`` for each ``(tag, texts)`` batch, in order.

        Each batch is one request (1 to ``batch_size`` texts; see :func:`batched`
        to cut them within ``max_request_bytes`` too); ``tag`` is passed
        through untouched (e.g. the texts' ids). Batches are read from the
        iterable only as requests are sent, so a corpus never sits in memory.
        """
        parameters = _parameters(top_k, min_weight, input_type=input_type, overflow=overflow)
        agen = self._pipeline(batches, lambda texts: self._encode_chunk(texts, parameters, return_tokens))
        try:
            async for item in agen:
                yield item
        finally:
            await agen.aclose()

    async def iter_encode(self, texts: Iterable[str | bytes], *, top_k: int | None = None,
                          min_weight: float | None = None, return_tokens: bool = False,
                          input_type: str | None = None, overflow: str | None = None) -> AsyncIterator[SparseVector]:
        """Stream one vector per text, in order (texts read lazily, one request's worth at a time)."""
        async for vector in self._stream(texts, top_k=top_k, min_weight=min_weight, return_tokens=return_tokens,
                                         input_type=input_type, overflow=overflow):
            yield vector

    @overload
    async def encode(self, texts: str, *, top_k: int | None = ..., min_weight: float | None = ...,
                     return_tokens: bool = ..., input_type: str | None = ...,
                     overflow: str | None = ...) -> SparseVector: ...

    @overload
    async def encode(self, texts: Iterable[str | bytes], *, top_k: int | None = ...,
                     min_weight: float | None = ..., return_tokens: bool = ..., input_type: str | None = ...,
                     overflow: str | None = ...) -> list[SparseVector]: ...

    async def encode(self, texts, *, top_k=None, min_weight=None, return_tokens=False, input_type=None,
                     overflow=None):
        """SPLADE vectors of ``texts``, in order; a single ``str`` gives a single vector.

        ``top_k``: keep at most this many terms per text (0: all); ``min_weight``:
        drop lighter terms (both the model's request parameters, validated by the
        server: a bad value raises :class:`InvalidRequestError` with its message).
        ``return_tokens``: also fetch the vocabulary string of each term.
        ``input_type``: ``"query"`` or ``"document"`` (the server's default),
        the side of an asymmetric model (an inference-free query side, a
        query/document pair) and its length; ``overflow``: ``"truncate"``
        (the server's default), ``"error"`` or ``"chunk"`` (the max over
        windows of a long text).
        """
        options = dict(top_k=top_k, min_weight=min_weight, return_tokens=return_tokens, input_type=input_type,
                       overflow=overflow)
        if isinstance(texts, (str, bytes)):
            return (await self.encode([texts], **options))[0]
        return [v async for v in self.iter_encode(texts, **options)]

    async def encode_queries(self, texts, **options: Any):
        """:meth:`encode` on the query side, ``input_type="query"`` (sentence-transformers'
        ``encode_query``, FlagEmbedding's ``encode_queries``): what every query must be encoded with,
        since an asymmetric model's query side has its own encoder, activation and length."""
        return await self.encode(texts, input_type="query", **options)

    async def encode_corpus(self, texts, **options: Any):
        """:meth:`encode` on the document side, ``input_type="document"`` (``encode_document``,
        ``encode_corpus``)."""
        return await self.encode(texts, input_type="document", **options)

    async def encode_csr(self, texts: Iterable[str | bytes], *, top_k: int | None = None,
                         min_weight: float | None = None, input_type: str | None = None,
                         overflow: str | None = None) -> scipy.sparse.csr_matrix:
        """``[len(texts), vocab_size]`` CSR matrix of the texts' vectors."""
        vectors = await self.encode(list(texts), top_k=top_k, min_weight=min_weight, input_type=input_type,
                                    overflow=overflow)
        return to_csr(vectors, await self.vocab_size())

    async def embed_dense(self, texts: Iterable[str | bytes]) -> np.ndarray:
        """The full ``[len(texts), vocab_size]`` float32 vectors (the ``<model>_embedding`` ensemble)."""
        batches = ((None, chunk) for chunk in self._requests(texts))
        rows = [r async for _, r in self._pipeline(batches, lambda c: self._infer(c, ("embedding",), None, self.embedding_model))]
        if not rows:
            return np.zeros((0, await self.vocab_size()), dtype=np.float32)
        return np.concatenate([r["embedding"] for r in rows])

    async def vocab_size(self) -> int:
        """The model's vocabulary size (asked of the server once)."""
        if self._vocab_size is None:
            # The ensemble declares `embedding` as [-1]: its width is only seen in an answer.
            result = await self._infer([""], ("embedding",), None, self.embedding_model)
            self._vocab_size = int(result["embedding"].shape[1])
        return self._vocab_size


INPUT_TYPES = ("query", "document")


def _m3_outputs(dense: bool, sparse: bool, colbert: bool, tokens: bool) -> tuple[str, ...]:
    outputs: list[str] = []
    if dense:
        outputs.append("dense")
    if sparse:
        outputs += ["indices", "values", "tokens"] if tokens else ["indices", "values"]
    if colbert:
        outputs += ["colbert", "colbert_lengths"]
    return tuple(outputs)


def _rows_to_m3(result: dict[str, np.ndarray], n: int) -> list[M3Embedding]:
    dense = result.get("dense")
    sparse = (_rows_to_vectors(result["indices"], result["values"], result.get("tokens"))
              if "indices" in result else None)
    colbert, lengths = result.get("colbert"), result.get("colbert_lengths")
    out = []
    for r in range(n):
        # Copies: a text's vectors must not keep the whole request's padded arrays alive.
        out.append(M3Embedding(
            None if dense is None else dense[r].copy(),
            None if sparse is None else sparse[r],
            None if colbert is None else colbert[r, :int(lengths.reshape(-1)[r])].copy()))
    return out


class AsyncBgeM3Client(_AsyncClient):
    """Encode texts with a ``bge_m3`` pipeline (dense, sparse lexical weights, ColBERT), from asyncio code.

    Arguments: see :class:`_AsyncClient` (``model`` defaults to ``bge_m3``; its
    multi-vector ensemble is ``<model>_colbert``, used only when ColBERT vectors
    are asked for). Only the outputs needed are requested.

    >>> async with AsyncBgeM3Client("grpc://127.0.0.1:8001") as m3:
    ...     q = await m3.encode_queries("what is the capital of france")
    ...     docs = await m3.encode_corpus(["paris is the capital of france"], return_colbert_vecs=True)
    """

    DEFAULT_MODEL = "bge_m3"

    @property
    def colbert_model(self) -> str:
        """The pipeline's ensemble that also returns ColBERT vectors: ``<model>_colbert``."""
        return f"{self.model}_colbert"

    def _request(self, *, return_dense: bool, return_sparse: bool, return_colbert_vecs: bool,
                 return_tokens: bool, top_k: int | None, min_weight: float | None,
                 input_type: str | None) -> tuple[str, tuple[str, ...], dict[str, Any] | None]:
        if not (return_dense or return_sparse or return_colbert_vecs):
            raise ValueError("ask for at least one of return_dense, return_sparse, return_colbert_vecs")
        if input_type is not None and input_type not in INPUT_TYPES:
            raise ValueError(f"input_type must be 'query' or 'document', got {input_type!r}")
        model = self.colbert_model if return_colbert_vecs else self.model
        outputs = _m3_outputs(return_dense, return_sparse, return_colbert_vecs, return_tokens and return_sparse)
        return model, outputs, _parameters(top_k, min_weight, input_type=input_type)

    async def encode_batches(self, batches: Iterable[tuple[T, Sequence[str | bytes]]], *,
                             return_dense: bool = True, return_sparse: bool = True,
                             return_colbert_vecs: bool = False, return_tokens: bool = False,
                             input_type: str | None = None, top_k: int | None = None,
                             min_weight: float | None = None) -> AsyncIterator[tuple[T, list[M3Embedding]]]:
        """Stream ``(tag, embeddings)`` for each ``(tag, texts)`` batch, in order (one request each);
        see :meth:`AsyncSpladeClient.encode_batches`."""
        model, outputs, parameters = self._request(
            return_dense=return_dense, return_sparse=return_sparse, return_colbert_vecs=return_colbert_vecs,
            return_tokens=return_tokens, top_k=top_k, min_weight=min_weight, input_type=input_type)

        async def request(texts: Sequence[str | bytes]) -> list[M3Embedding]:
            return _rows_to_m3(await self._infer(texts, outputs, parameters, model), len(texts))

        agen = self._pipeline(batches, request)
        try:
            async for item in agen:
                yield item
        finally:
            await agen.aclose()

    async def iter_encode(self, texts: Iterable[str | bytes], **kwargs: Any) -> AsyncIterator[M3Embedding]:
        """Stream one :class:`M3Embedding` per text, in order (arguments as :meth:`encode`)."""
        async for embedding in self._stream(texts, **kwargs):
            yield embedding

    async def encode(self, texts, *, return_dense: bool = True, return_sparse: bool = True,
                     return_colbert_vecs: bool = False, return_tokens: bool = False,
                     input_type: str | None = None, top_k: int | None = None, min_weight: float | None = None):
        """One :class:`M3Embedding` per text, in order (a single ``str`` gives a single one).

        ``return_dense`` / ``return_sparse`` / ``return_colbert_vecs``: which
        representations to compute and fetch (FlagEmbedding's names; the
        others are None). ``return_tokens``: also the vocabulary string of each
        lexical weight. ``input_type``: ``"query"`` or ``"document"`` (the
        pipeline's query or passage ``max_length``; None: the server's default).
        ``top_k`` / ``min_weight``: the sparse part's request parameters.
        :func:`~client.m3.to_flagembedding` turns the result into FlagEmbedding's
        ``{"dense_vecs", "lexical_weights", "colbert_vecs"}``.
        """
        kwargs = dict(return_dense=return_dense, return_sparse=return_sparse,
                      return_colbert_vecs=return_colbert_vecs, return_tokens=return_tokens,
                      input_type=input_type, top_k=top_k, min_weight=min_weight)
        if isinstance(texts, (str, bytes)):
            return (await self.encode([texts], **kwargs))[0]
        self._request(**kwargs)  # bad arguments fail before any text is read
        return [e async for e in self.iter_encode(texts, **kwargs)]

    async def encode_queries(self, texts, **kwargs: Any):
        """:meth:`encode` with ``input_type="query"`` (FlagEmbedding's ``encode_queries``)."""
        return await self.encode(texts, input_type="query", **kwargs)

    async def encode_corpus(self, texts, **kwargs: Any):
        """:meth:`encode` with ``input_type="document"`` (FlagEmbedding's ``encode_corpus``)."""
        return await self.encode(texts, input_type="document", **kwargs)

    async def compute_score(self, sentence_pairs, *, weights_for_different_modes: Sequence[float] | None = None,
                            return_dense: bool = True, return_sparse: bool = True,
                            return_colbert_vecs: bool = True) -> dict[str, Any]:
        """FlagEmbedding's ``BGEM3FlagModel.compute_score``: scores of ``(query, passage)`` pairs.

        Queries are encoded as ``query``, passages as ``document``; the result has
        the keys ``dense``, ``sparse``, ``colbert``, ``sparse+dense``,
        ``colbert+sparse+dense`` (see :func:`~client.m3.score_pairs`; a mode not
        asked for is left out), each a list with one score per pair, or a float
        for a single pair. ``weights_for_different_modes``: [dense, sparse,
        colbert], default [1, 1, 1].
        """
        if isinstance(sentence_pairs, list) and not sentence_pairs:
            return {}
        single = isinstance(sentence_pairs[0], str)
        pairs = [tuple(sentence_pairs)] if single else [tuple(p) for p in sentence_pairs]
        if any(len(p) != 2 for p in pairs):
            raise ValueError("sentence_pairs are (query, passage) pairs")
        what = dict(return_dense=return_dense, return_sparse=return_sparse, return_colbert_vecs=return_colbert_vecs)
        queries = await self.encode_queries([q for q, _ in pairs], **what)
        passages = await self.encode_corpus([p for _, p in pairs], **what)
        scores = score_pairs(queries, passages, weights_for_different_modes)
        return {k: v[0] for k, v in scores.items()} if single else scores


class _LoopThread:
    """An event loop running in a daemon thread, for blocking callers."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="splade-client", daemon=True)
        self.thread.start()

    def run(self, coro: Awaitable[T]) -> T:
        """Run ``coro`` on the loop and wait for its result."""
        if self.loop.is_closed():
            coro.close()
            raise RuntimeError("the client is closed")
        result: concurrent.futures.Future = concurrent.futures.Future()
        finished = threading.Event()
        tasks: list[asyncio.Task] = []

        def settle(task: asyncio.Task) -> None:
            if task.cancelled():
                result.cancel()
            elif task.exception() is not None:
                result.set_exception(task.exception())
            else:
                result.set_result(task.result())
            finished.set()

        def start() -> None:
            task = self.loop.create_task(coro)
            tasks.append(task)
            task.add_done_callback(settle)

        try:
            self.loop.call_soon_threadsafe(start)
            return result.result()
        except BaseException:
            # Interrupted (Ctrl-C), possibly inside call_soon_threadsafe itself:
            # cancel the work in the loop and let it unwind before anything else
            # runs there. Callbacks run in order, so if start() was queued it
            # has run by now; if it was not, there is nothing to wait for.
            def cancel() -> None:
                if tasks:
                    tasks[0].cancel()
                else:
                    finished.set()

            self.loop.call_soon_threadsafe(cancel)
            finished.wait(10)
            raise

    def stop(self) -> None:
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)
        if not self.loop.is_running() and not self.loop.is_closed():
            self.loop.close()


def _shutdown(runner: _LoopThread, aclient: _AsyncClient) -> None:
    # Also what a client that was never closed gets when it is collected.
    try:
        runner.run(aclient.close())
    finally:
        runner.stop()


class _BlockingClient:
    """A blocking client: its asyncio client run on an event loop of its own, in a background thread."""

    _ASYNC: type[_AsyncClient] = _AsyncClient

    def __init__(self, url: str = DEFAULT_URL, **kwargs: Any):
        self._aclient = self._ASYNC(url, **kwargs)
        self._runner = _LoopThread()
        self._finalizer = weakref.finalize(self, _shutdown, self._runner, self._aclient)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r}, model={self.model!r})"

    def __getattr__(self, name: str) -> Any:
        # Settings (url, endpoint, model, batch_size, timeout, ...) are the async client's.
        if name.startswith("_"):
            raise AttributeError(name)
        value = getattr(self._aclient, name)
        if callable(value):
            raise AttributeError(name)
        return value

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection and stop the client's event-loop thread."""
        self._finalizer()

    def _iterate(self, agen: AsyncIterator[T]) -> Iterator[T]:
        try:
            while True:
                try:
                    yield self._runner.run(agen.__anext__())
                except StopAsyncIteration:
                    return
        finally:
            self._runner.run(agen.aclose())

    def health(self, probe: bool = True) -> Health:
        """See :meth:`AsyncSpladeClient.health`."""
        return self._runner.run(self._aclient.health(probe))

    def model_outputs(self) -> list[str]:
        """See :meth:`_AsyncClient.model_outputs`."""
        return self._runner.run(self._aclient.model_outputs())


class SpladeClient(_BlockingClient):
    """The blocking form of :class:`AsyncSpladeClient`: same arguments, same methods.

    >>> with SpladeClient("http://127.0.0.1:8000") as client:
    ...     vector = client.encode("what is the capital of france", top_k=8, return_tokens=True)
    ...     vector.top(3)
    [('capital', 2.7945964), ('france', 2.358742), ('french', 1.8444563)]

    Thread-safe: several threads may call one client at once (their requests
    share its connection).
    """

    _ASYNC = AsyncSpladeClient

    @overload
    def encode(self, texts: str, *, top_k: int | None = ..., min_weight: float | None = ...,
               return_tokens: bool = ..., input_type: str | None = ..., overflow: str | None = ...) -> SparseVector: ...

    @overload
    def encode(self, texts: Iterable[str | bytes], *, top_k: int | None = ..., min_weight: float | None = ...,
               return_tokens: bool = ..., input_type: str | None = ...,
               overflow: str | None = ...) -> list[SparseVector]: ...

    def encode(self, texts, *, top_k=None, min_weight=None, return_tokens=False, input_type=None, overflow=None):
        """See :meth:`AsyncSpladeClient.encode`."""
        if not isinstance(texts, (str, bytes)):
            texts = list(texts)  # read here, not in the loop's thread
        return self._runner.run(self._aclient.encode(texts, top_k=top_k, min_weight=min_weight,
                                                     return_tokens=return_tokens, input_type=input_type,
                                                     overflow=overflow))

    def encode_queries(self, texts, **options: Any):
        """See :meth:`AsyncSpladeClient.encode_queries`."""
        return self.encode(texts, input_type="query", **options)

    def encode_corpus(self, texts, **options: Any):
        """See :meth:`AsyncSpladeClient.encode_corpus`."""
        return self.encode(texts, input_type="document", **options)

    def iter_encode(self, texts: Iterable[str | bytes], *, top_k: int | None = None,
                    min_weight: float | None = None, return_tokens: bool = False, input_type: str | None = None,
                    overflow: str | None = None) -> Iterator[SparseVector]:
        """See :meth:`AsyncSpladeClient.iter_encode`."""
        return self._iterate(self._aclient.iter_encode(texts, top_k=top_k, min_weight=min_weight,
                                                       return_tokens=return_tokens, input_type=input_type,
                                                       overflow=overflow))

    def encode_batches(self, batches: Iterable[tuple[T, Sequence[str | bytes]]], *, top_k: int | None = None,
                       min_weight: float | None = None, return_tokens: bool = False, input_type: str | None = None,
                       overflow: str | None = None) -> Iterator[tuple[T, list[SparseVector]]]:
        """See :meth:`AsyncSpladeClient.encode_batches`."""
        return self._iterate(self._aclient.encode_batches(batches, top_k=top_k, min_weight=min_weight,
                                                          return_tokens=return_tokens, input_type=input_type,
                                                          overflow=overflow))

    def encode_csr(self, texts: Iterable[str | bytes], *, top_k: int | None = None,
                   min_weight: float | None = None, input_type: str | None = None,
                   overflow: str | None = None) -> scipy.sparse.csr_matrix:
        """See :meth:`AsyncSpladeClient.encode_csr`."""
        return self._runner.run(self._aclient.encode_csr(list(texts), top_k=top_k, min_weight=min_weight,
                                                         input_type=input_type, overflow=overflow))

    def embed_dense(self, texts: Iterable[str | bytes]) -> np.ndarray:
        """See :meth:`AsyncSpladeClient.embed_dense`."""
        return self._runner.run(self._aclient.embed_dense(list(texts)))

    def vocab_size(self) -> int:
        """See :meth:`AsyncSpladeClient.vocab_size`."""
        return self._runner.run(self._aclient.vocab_size())


class BgeM3Client(_BlockingClient):
    """The blocking form of :class:`AsyncBgeM3Client`: same arguments, same methods.

    >>> with BgeM3Client("grpc://127.0.0.1:8001") as m3:
    ...     out = to_flagembedding(m3.encode(["what is bge m3", "a passage"], return_colbert_vecs=True))
    ...     m3.compute_score([("what is bge m3", "BGE-M3 is an embedding model")],
    ...                      weights_for_different_modes=[0.4, 0.2, 0.4])["colbert+sparse+dense"]
    """

    _ASYNC = AsyncBgeM3Client

    def encode(self, texts, **kwargs: Any):
        """See :meth:`AsyncBgeM3Client.encode`."""
        if not isinstance(texts, (str, bytes)):
            texts = list(texts)  # read here, not in the loop's thread
        return self._runner.run(self._aclient.encode(texts, **kwargs))

    def encode_queries(self, texts, **kwargs: Any):
        """See :meth:`AsyncBgeM3Client.encode_queries`."""
        return self.encode(texts, input_type="query", **kwargs)

    def encode_corpus(self, texts, **kwargs: Any):
        """See :meth:`AsyncBgeM3Client.encode_corpus`."""
        return self.encode(texts, input_type="document", **kwargs)

    def iter_encode(self, texts: Iterable[str | bytes], **kwargs: Any) -> Iterator[M3Embedding]:
        """See :meth:`AsyncBgeM3Client.iter_encode`."""
        return self._iterate(self._aclient.iter_encode(texts, **kwargs))

    def encode_batches(self, batches: Iterable[tuple[T, Sequence[str | bytes]]],
                       **kwargs: Any) -> Iterator[tuple[T, list[M3Embedding]]]:
        """See :meth:`AsyncBgeM3Client.encode_batches`."""
        return self._iterate(self._aclient.encode_batches(batches, **kwargs))

    def compute_score(self, sentence_pairs, **kwargs: Any) -> dict[str, Any]:
        """See :meth:`AsyncBgeM3Client.compute_score`."""
        if not isinstance(sentence_pairs, tuple):
            sentence_pairs = list(sentence_pairs)
        return self._runner.run(self._aclient.compute_score(sentence_pairs, **kwargs))
