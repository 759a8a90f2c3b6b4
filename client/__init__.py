"""Python client and command line for the SPLADE Triton service.

    from client import SpladeClient

    with SpladeClient("grpc://127.0.0.1:8001") as splade:
        vectors = splade.encode(["what is the capital of france", "paris is in france"], top_k=64)
        print(vectors[0].dot(vectors[1]))

``python -m client --help`` lists the commands (embed, encode, search, evaluate, health).
"""

import logging

from .core import (
    DEFAULT_URL,
    MAX_BATCH_SIZE,
    MAX_REQUEST_BYTES,
    AsyncSpladeClient,
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
from .scoring import Hit, MatchedTerm, SparseIndex, compute_lexical_matching_score, dot, score_matrix

# A library logs, the application decides where to (retries are logged as warnings).
logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "DEFAULT_URL",
    "MAX_BATCH_SIZE",
    "MAX_REQUEST_BYTES",
    "AsyncSpladeClient",
    "Endpoint",
    "Health",
    "Hit",
    "InvalidRequestError",
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
    "compute_lexical_matching_score",
    "dot",
    "from_json",
    "parse_url",
    "score_matrix",
    "to_csr",
    "to_json",
    "to_lexical_weights",
    "to_native",
    "to_tei",
]
