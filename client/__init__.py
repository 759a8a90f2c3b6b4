"""Python client and command line for the SPLADE / BGE-M3 Triton service.

    from client import SpladeClient

    with SpladeClient("grpc://127.0.0.1:8001") as splade:
        vectors = splade.encode(["what is the capital of france", "paris is in france"], top_k=64)
        print(vectors[0].dot(vectors[1]))

    from client import BgeM3Client, to_flagembedding

    with BgeM3Client("grpc://127.0.0.1:8001") as m3:               # a bge_m3 pipeline
        out = to_flagembedding(m3.encode(texts, return_dense=True, return_sparse=True, return_colbert_vecs=True))

``python -m client --help`` lists the commands (embed, encode, index, search, evaluate, health);
hybrid retrieval in a search engine: :mod:`client.engine`, :mod:`client.retrieval`.
"""

import logging

from .core import (
    DEFAULT_URL,
    MAX_BATCH_SIZE,
    MAX_REQUEST_BYTES,
    AsyncBgeM3Client,
    AsyncSpladeClient,
    BgeM3Client,
    Endpoint,
    Health,
    SpladeClient,
    batched,
    parse_url,
)
from .errors import (
    InvalidRequestError,
    ModelNotFoundError,
    ProtocolError,
    RequestTimeoutError,
    ServerError,
    ServerUnavailableError,
    SpladeError,
)
from .formats import SparseVector, from_json, to_csr, to_json, to_lexical_weights, to_native, to_tei
from .m3 import M3Embedding, colbert_score, dense_score, hybrid_scores, score_pairs, to_flagembedding
from .scoring import Hit, MatchedTerm, SparseIndex, compute_lexical_matching_score, dot, score_matrix

# A library logs, the application decides where to (retries are logged as warnings).
logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "DEFAULT_URL",
    "MAX_BATCH_SIZE",
    "MAX_REQUEST_BYTES",
    "AsyncBgeM3Client",
    "AsyncSpladeClient",
    "BgeM3Client",
    "Endpoint",
    "Health",
    "Hit",
    "InvalidRequestError",
    "M3Embedding",
    "MatchedTerm",
    "ModelNotFoundError",
    "ProtocolError",
    "RequestTimeoutError",
    "ServerError",
    "ServerUnavailableError",
    "SparseIndex",
    "SparseVector",
    "SpladeClient",
    "SpladeError",
    "batched",
    "colbert_score",
    "compute_lexical_matching_score",
    "dense_score",
    "dot",
    "from_json",
    "hybrid_scores",
    "parse_url",
    "score_matrix",
    "score_pairs",
    "to_csr",
    "to_flagembedding",
    "to_json",
    "to_lexical_weights",
    "to_native",
    "to_tei",
]
