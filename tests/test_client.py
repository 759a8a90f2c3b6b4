"""The Python client (client/): formats, scoring, chunking, retries and errors, against real tritonservers."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from types import SimpleNamespace

import ir_measures
import numpy as np
import pytest

from client import (
    AsyncSpladeClient,
    InvalidRequestError,
    ModelNotFoundError,
    RequestTimeoutError,
    ServerUnavailableError,
    SparseIndex,
    SparseVector,
    SpladeClient,
    batched,
    compute_lexical_matching_score,
    core,
    from_json,
    parse_url,
    score_matrix,
    to_csr,
    to_json,
    to_lexical_weights,
    to_tei,
)
from client.corpus import VectorsFile, vector_line
from client.evaluate import measure_run
from splade_triton.artifacts.texts import VARIED_TEXTS
from tests import triton
from tests.conftest import Server, free_port

TEXTS = ["what is the capital of france", "paris is the capital and largest city of france",
         "how do vaccines train the immune system", "", "Ünïcödé 東京 مرحبا", "def f(x): return x * 2"]


@pytest.fixture(params=["http", "grpc"])
def protocol(request):
    return request.param


@pytest.fixture
def url(protocol, server):
    return f"{protocol}://{server.http_url if protocol == 'http' else server.grpc_url}"


@pytest.fixture
def splade(url):
    with SpladeClient(url) as c:
        yield c


@pytest.fixture
def spy(monkeypatch):
    """Records every request the client sends (texts per request, outputs) and the most in flight at once."""
    calls: list[tuple[int, tuple[str, ...]]] = []
    models: list[str] = []
    state = {"now": 0, "max": 0}
    original = core._Transport.infer

    async def infer(self, model, texts, outputs, parameters):
        calls.append((len(texts), tuple(outputs)))
        models.append(model)
        state["now"] += 1
        state["max"] = max(state["max"], state["now"])
        try:
            return await original(self, model, texts, outputs, parameters)
        finally:
            state["now"] -= 1

    monkeypatch.setattr(core._Transport, "infer", infer)
    return SimpleNamespace(calls=calls, models=models, state=state)


def assert_same_vector(got: SparseVector, want: dict[int, float]) -> None:
    got_dict = got.to_dict()
    assert set(got_dict) == set(want)
    for index, value in want.items():
        assert got_dict[index] == pytest.approx(value, abs=1e-4)


# --- without a server ---------------------------------------------------------------


@pytest.mark.parametrize("url, protocol, expected", [
    ("grpc://127.0.0.1:8001", None, "grpc://127.0.0.1:8001"),
    ("http://localhost:8000/", None, "http://localhost:8000"),
    ("HTTP://example.org", None, "http://example.org:8000"),
    ("127.0.0.1:9000", None, "grpc://127.0.0.1:9000"),
    ("127.0.0.1:9000", "http", "http://127.0.0.1:9000"),
    ("[::1]:8001", None, "grpc://[::1]:8001"),
    ("[::1]", "http", "http://[::1]:8000"),
])
def test_parse_url(url, protocol, expected):
    assert str(parse_url(url, protocol)) == expected


@pytest.mark.parametrize("url, protocol", [
    ("ftp://host:1", None), ("http://host:1/v2", None), ("http://host:1", "grpc"), ("host:0", None),
    ("host:http", None), ("", None), ("host:1", "https"),
])
def test_parse_url_refuses(url, protocol):
    with pytest.raises(ValueError):
        parse_url(url, protocol)


def test_vector_forms_round_trip():
    vector = SparseVector.from_pairs({5: 0.5, 3: 2.0, 9: 1.25, 7: 0.0}, tokens={5: "e", 3: "c", 9: "i", 7: "g"})
    assert vector.indices.tolist() == [3, 9, 5]  # zeros dropped, heaviest first
    assert vector.to_native() == {"indices": [3, 9, 5], "values": [2.0, 1.25, 0.5], "tokens": ["c", "i", "e"]}
    assert vector.to_tei() == [{"index": 3, "value": 2.0}, {"index": 5, "value": 0.5}, {"index": 9, "value": 1.25}]
    assert vector.to_lexical_weights() == {"3": 2.0, "9": 1.25, "5": 0.5}
    for fmt in ("native", "tei", "m3"):
        again = from_json(json.loads(json.dumps(to_json(vector, fmt))))
        assert again == vector
        assert again.indices.tolist() == [3, 9, 5]
    with pytest.raises(ValueError, match="unknown format"):
        to_json(vector, "csv")


def test_weights_are_written_as_their_shortest_float32_decimal():
    weights = np.array([2.79, 1e-7, 0.1], dtype=np.float32)
    vector = SparseVector(np.array([1, 2, 3]), weights)
    line = vector_line("d", vector)
    assert b'"values":[2.79,1e-07,0.1]' in line
    back = np.array(json.loads(line)["values"], dtype=np.float32)
    assert back.tobytes() == weights.tobytes()  # bit-exact round trip


def test_to_csr():
    vectors = [SparseVector.from_pairs({4: 1.0, 1: 2.0}), SparseVector.from_pairs({}), SparseVector.from_pairs({0: 3.0})]
    matrix = to_csr(vectors, 6)
    assert matrix.shape == (3, 6) and matrix.dtype == np.float32 and matrix.has_sorted_indices
    np.testing.assert_array_equal(matrix.toarray(), [[0, 2, 0, 0, 1, 0], [0] * 6, [3, 0, 0, 0, 0, 0]])
    assert to_csr([], 6).shape == (0, 6)
    with pytest.raises(ValueError, match="outside"):
        to_csr(vectors, 4)


def test_compute_lexical_matching_score_has_flagembedding_semantics():
    a = {"10": 0.5, "20": 2.0, "30": 1.0}
    b = {"20": 1.5, "40": 3.0, "10": 2.0}
    assert compute_lexical_matching_score(a, b) == pytest.approx(0.5 * 2.0 + 2.0 * 1.5)
    assert compute_lexical_matching_score(a, {"99": 1.0}) == 0
    matrix = compute_lexical_matching_score([a, b], [b, a, {}])
    assert isinstance(matrix, np.ndarray) and matrix.shape == (2, 3)
    assert matrix[0, 0] == pytest.approx(4.0) and matrix[1, 1] == pytest.approx(4.0) and matrix[0, 2] == 0
    with pytest.raises(ValueError):
        compute_lexical_matching_score(a, [b])
    va, vb = SparseVector.from_lexical_weights(a), SparseVector.from_lexical_weights(b)
    assert va.dot(vb) == pytest.approx(compute_lexical_matching_score(a, b))
    np.testing.assert_allclose(score_matrix([va, vb], [vb, va]), compute_lexical_matching_score([a, b], [b, a]))


def test_sparse_index_agrees_with_brute_force():
    rng = np.random.default_rng(0)

    def random_vector(n):
        indices = rng.choice(500, size=n, replace=False)
        return SparseVector.from_pairs(zip(indices, rng.uniform(0.1, 3.0, size=n)))

    docs = [random_vector(int(rng.integers(1, 40))) for _ in range(300)]
    queries = [random_vector(int(rng.integers(1, 15))) for _ in range(20)]
    index = SparseIndex([f"d{i}" for i in range(len(docs))], docs)
    brute = score_matrix(queries, docs)
    for q, query in enumerate(queries):
        hits = index.search(query, k=10)
        expected = np.sort(brute[q][brute[q] > 0])[::-1][:10]
        np.testing.assert_allclose([h.score for h in hits], expected, rtol=1e-6)
        np.testing.assert_allclose(index.scores(query), brute[q], rtol=1e-6)
        for hit in hits:
            assert sum(t.contribution for t in hit.terms) == pytest.approx(hit.score, rel=1e-5)
            contributions = [t.contribution for t in hit.terms]
            assert contributions == sorted(contributions, reverse=True)
    # A query term beyond every document's vocabulary adds nothing; no shared term, no hit.
    assert index.search(SparseVector.from_pairs({10_000: 1.0})) == []
    with pytest.raises(ValueError, match="unique"):
        SparseIndex(["a", "a"], docs[:2])


def test_vectors_file_drops_a_torn_last_line_and_refuses_other_damage(tmp_path):
    path = tmp_path / "vectors.jsonl"
    vector = SparseVector.from_pairs({1: 1.0})
    with VectorsFile.open(path) as out:
        out.write([vector_line("a", vector), vector_line(7, vector)])
    whole = path.read_bytes()
    path.write_bytes(whole + vector_line("b", vector)[:9])  # a crash in the middle of a write
    out = VectorsFile.open(path)
    out.close()
    assert out.done == {"a", "7"} and out.dropped_bytes == 9
    assert path.read_bytes() == whole
    path.write_bytes(b"not json\n" + whole)
    with pytest.raises(ValueError, match=":1: not a line written by encode"):
        VectorsFile.open(path)


def test_measure_run_is_ir_measures():
    qrels = {"q1": {"a": 1, "b": 0}, "q2": {"c": 2, "d": 1}}
    run = {"q1": {"b": 3.0, "a": 2.0, "x": 1.0}, "q2": {"d": 5.0, "e": 4.0, "c": 1.0}}
    ours = measure_run(qrels, run)
    theirs = ir_measures.calc_aggregate([ir_measures.nDCG @ 10, ir_measures.RR @ 10, ir_measures.R @ 100], qrels, run)
    assert ours == pytest.approx({"nDCG@10": theirs[ir_measures.nDCG @ 10], "MRR@10": theirs[ir_measures.RR @ 10],
                                  "Recall@100": theirs[ir_measures.R @ 100]})
    assert ours["MRR@10"] == pytest.approx((1 / 2 + 1 / 1) / 2)
    # A judged query with nothing retrieved counts as 0, not as absent.
    assert measure_run(qrels, {"q1": run["q1"]})["MRR@10"] == pytest.approx(0.5 / 2)


# --- against the server ---------------------------------------------------------------


def test_encode_returns_the_models_outputs(protocol, server, splade):
    want = triton.encode(protocol, triton.client(protocol, server), TEXTS, outputs=("indices", "values", "tokens"))
    vectors = splade.encode(TEXTS, return_tokens=True)
    assert len(vectors) == len(TEXTS)
    for row, vector in enumerate(vectors):
        keep = want["indices"][row] >= 0
        assert vector.indices.tolist() == want["indices"][row][keep].tolist()
        np.testing.assert_array_equal(vector.values, want["values"][row][keep])
        assert list(vector.tokens) == [t.decode() for t in want["tokens"][row][keep]]
    single = splade.encode(TEXTS[0])
    assert isinstance(single, SparseVector) and single.tokens is None and single == vectors[0]


def test_only_the_needed_outputs_are_requested(splade, spy):
    splade.encode(["a"])
    splade.encode(["a"], return_tokens=True)
    splade.embed_dense(["a"])
    assert [outputs for _, outputs in spy.calls] == [("indices", "values"), ("indices", "values", "tokens"),
                                                     ("embedding",)]
    # The vocabulary-wide vector comes from its own ensemble: `splade` never computes it.
    assert spy.models == ["splade", "splade", "splade_embedding"]


def test_tei_form_is_the_non_zero_entries_of_the_full_vector(splade):
    dense = splade.embed_dense(TEXTS)
    tei = json.loads(json.dumps(to_tei(splade.encode(TEXTS))))
    for row, entries in zip(dense, tei):
        assert [e["index"] for e in entries] == np.flatnonzero(row).tolist()  # ascending, as TEI emits
        assert all(set(e) == {"index", "value"} and isinstance(e["index"], int) for e in entries)
        np.testing.assert_allclose([e["value"] for e in entries], row[row != 0], rtol=1e-6)


def test_m3_lexical_weights_and_matching_score(splade):
    vectors = splade.encode(TEXTS)
    dense = splade.embed_dense(TEXTS).astype(np.float64)
    weights = to_lexical_weights(vectors)
    for row, lw in zip(dense, weights):
        assert all(isinstance(k, str) and k.isdigit() for k in lw)
        assert {int(k) for k in lw} == set(np.flatnonzero(row).tolist())
        np.testing.assert_allclose([lw[str(i)] for i in np.flatnonzero(row)], row[row != 0], rtol=1e-6)
    assert compute_lexical_matching_score(weights[0], weights[1]) == pytest.approx(dense[0] @ dense[1], rel=1e-5)
    assert compute_lexical_matching_score(weights[0], weights[1]) > compute_lexical_matching_score(weights[0], weights[2])
    np.testing.assert_allclose(compute_lexical_matching_score(weights, weights), dense @ dense.T, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(score_matrix(vectors, vectors), dense @ dense.T, rtol=1e-5, atol=1e-6)


def test_csr_batch_is_the_full_vectors(splade):
    matrix = splade.encode_csr(TEXTS)
    dense = splade.embed_dense(TEXTS)
    assert matrix.shape == dense.shape == (len(TEXTS), splade.vocab_size())
    np.testing.assert_allclose(matrix.toarray(), dense, rtol=1e-6)


def test_request_parameters(splade):
    full = splade.encode(TEXTS[:3])
    top3 = splade.encode(TEXTS[:3], top_k=np.int64(3))
    heavy = splade.encode(TEXTS[:3], min_weight=1.0)
    for f, t, h in zip(full, top3, heavy):
        assert t.indices.tolist() == f.indices[:3].tolist()
        assert len(h) and (h.values >= 1.0).all() and h.indices.tolist() == f.indices[f.values >= 1.0].tolist()


def test_1000_texts_are_chunked_sent_concurrently_and_kept_in_order(protocol, server, url, spy):
    words = "sun moon river stone cloud forest ocean city bread music garden winter paper glass".split()
    texts = [f"{words[i % 14]} {words[i // 14 % 14]} {words[i // 196]} number {i}" for i in range(1000)]
    assert len(set(texts)) == 1000
    with SpladeClient(url, max_in_flight=4) as c:
        vectors = c.encode(texts)
    assert [n for n, _ in spy.calls] == [64] * 15 + [40]
    assert 2 <= spy.state["max"] <= 4
    direct = triton.client(protocol, server)
    for start in range(0, 1000, 64):
        want = triton.encode(protocol, direct, texts[start:start + 64], outputs=("indices", "values"))
        for row, vector in enumerate(vectors[start:start + 64]):
            keep = want["indices"][row] >= 0
            assert_same_vector(vector, dict(zip(want["indices"][row][keep].tolist(),
                                                want["values"][row][keep].tolist())))


def test_batch_size_and_in_flight_are_configurable(url, spy):
    texts = ([t for t in VARIED_TEXTS if len(t) < 400] * 3)[:50]  # lengths vary; no 512-token passage
    with SpladeClient(url, batch_size=7, max_in_flight=3) as c:
        vectors = c.encode(texts)
        again = list(c.iter_encode(iter(texts)))
    assert [n for n, _ in spy.calls][:8] == [7] * 7 + [1]
    assert spy.state["max"] <= 3
    assert vectors == again
    with SpladeClient(url) as c:
        assert c.encode(texts) == vectors  # the same vectors however they were batched
        assert c.encode([]) == []


def test_batched():
    assert list(batched(range(7), 3)) == [[0, 1, 2], [3, 4, 5], [6]]
    sizes = [b"x" * n for n in (4, 4, 3, 9, 1, 1)]
    assert [[len(t) for t in b] for b in batched(sizes, 10, max_bytes=8)] == [[4, 4], [3], [9], [1, 1]]
    assert list(batched([], 3)) == []


def test_long_texts_are_cut_within_the_servers_request_bytes(url, spy):
    # 40 texts of 40,000 bytes: under max_text_bytes each, 1.6 MB together (> max_request_bytes).
    texts = [f"document {i} " + "word " * 8000 for i in range(40)]
    texts = [t[:40_000] for t in texts]
    with SpladeClient(url, max_request_bytes=None, retries=0) as c, \
            pytest.raises(InvalidRequestError, match="max_request_bytes"):
        c.encode(texts)
    with SpladeClient(url) as c:
        vectors = c.encode(texts)
        first = c.encode(texts[:1])
    assert [n for n, _ in spy.calls[1:]] == [26, 14, 1]  # 26 * 40,000 <= 1,048,576 < 27 * 40,000
    assert len(vectors) == 40 and vectors[0] == first[0]


def test_async_client(url):
    async def run():
        async with AsyncSpladeClient(url, batch_size=4) as c:
            many = await c.encode(TEXTS, return_tokens=True)
            one = await c.encode(TEXTS[0])
            streamed = [v async for v in c.iter_encode(TEXTS)]
            together = await asyncio.gather(c.encode(TEXTS[:2]), c.encode(TEXTS[2:]))
            return many, one, streamed, together

    many, one, streamed, together = asyncio.run(run())
    with SpladeClient(url) as c:
        sync = c.encode(TEXTS)
    assert many == sync == streamed == together[0] + together[1]
    assert one == sync[0] and many[0].tokens[0] == "capital"


def test_sync_client_is_thread_safe(url):
    with SpladeClient(url) as c:
        expected = c.encode(TEXTS)
        results = [None] * 4

        def work(i):
            results[i] = c.encode(TEXTS)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert all(r == expected for r in results)


def test_invalid_arg_raises_the_servers_message_without_retry(url, spy):
    with SpladeClient(url, retries=5) as c:
        with pytest.raises(InvalidRequestError, match="top_k must be an integer between 0 and 2147483647") as info:
            c.encode(["a", "b"], top_k=-3)
        assert info.value.status in ("400", "StatusCode.INVALID_ARGUMENT")
        with pytest.raises(InvalidRequestError, match="min_weight must be a finite number >= 0, got nan"):
            c.encode(["a"], min_weight=float("nan"))
        with pytest.raises(InvalidRequestError, match="is not valid UTF-8"):
            c.encode([b"ab\xff"])
    assert len(spy.calls) == 3  # one request each: nothing retried


def test_unknown_model_is_not_retried(url, spy):
    with SpladeClient(url, model="nope", retries=5) as c, pytest.raises(ModelNotFoundError, match="'nope'"):
        c.encode(["a"])
    assert len(spy.calls) == 1


def test_timeout(url, spy):
    with SpladeClient(url, timeout=0.0005, retries=5) as c, pytest.raises(RequestTimeoutError, match="within"):
        c.encode(["a"])
    assert len(spy.calls) == 1


def test_server_down_is_retried_then_reported(protocol, spy):
    url = f"{protocol}://127.0.0.1:{free_port()}"
    with SpladeClient(url, retries=2, backoff=0.01) as c, pytest.raises(ServerUnavailableError) as info:
        c.encode(["a"])
    assert str(info.value).startswith(f"cannot reach the server at {url}")
    assert len(spy.calls) == 3


def test_retries_until_a_late_server_is_up(server, repository, tmp_path, caplog):
    late = Server(repository, tmp_path / "late.log")  # its launcher is starting: nothing listens yet
    try:
        assert not late.is_ready()
        urls = {"grpc": f"grpc://{late.grpc_url}", "http": f"http://{late.http_url}"}
        results, errors = {}, {}

        def work(protocol):
            try:
                with SpladeClient(urls[protocol], retries=600, backoff=0.1, max_backoff=0.5) as c:
                    results[protocol] = c.encode(TEXTS)
            except Exception as exc:  # noqa: BLE001 - reported below
                errors[protocol] = exc

        with caplog.at_level(logging.WARNING, logger="client"):
            threads = [threading.Thread(target=work, args=(p,)) for p in urls]
            for t in threads:
                t.start()
            for t in threads:
                t.join(240)
        assert not errors
        with SpladeClient(f"grpc://{server.grpc_url}") as c:
            expected = c.encode(TEXTS)
        assert results["grpc"] == expected and results["http"] == expected
        retried = {p for p, u in urls.items() if any(u in r.getMessage() and "retry" in r.getMessage()
                                                     for r in caplog.records)}
        assert retried == {"grpc", "http"}  # both really met a server that was not up
    finally:
        late.stop()


def test_health(splade, url):
    health = splade.health()
    assert health.ok and health.url == url and health.version and health.probe_ms > 0
    with SpladeClient(url, model="nope") as c:
        health = c.health()
    assert health.live and health.ready and not health.model_ready and not health.ok
