"""The exceptions of the client: one type per thing a caller can do something about."""

from __future__ import annotations

__all__ = [
    "InvalidRequestError",
    "ModelNotFoundError",
    "ProtocolError",
    "RequestTimeoutError",
    "ServerError",
    "ServerUnavailableError",
    "SpladeError",
]


class SpladeError(Exception):
    """Base class of every error the client raises.

    ``message`` is the server's own message where there is one; ``status`` the
    protocol status (``"400"``, ``"StatusCode.INVALID_ARGUMENT"``, ...) or None;
    ``url`` the server the request went to.
    """

    retryable = False

    def __init__(self, message: str, *, status: str | None = None, url: str | None = None):
        super().__init__(message)
        self.message = message
        self.status = status
        self.url = url

    def __str__(self) -> str:
        return self.message


class InvalidRequestError(SpladeError, ValueError):
    """The server refused the request (INVALID_ARG): never retried.

    The message is the server's, e.g. ``top_k must be an integer between 0 and
    2147483647 ..., got -3``.
    """


class ModelNotFoundError(SpladeError):
    """The server answers but does not serve the model (wrong name, or not loaded)."""


class ServerUnavailableError(SpladeError, ConnectionError):
    """The server could not be reached or said UNAVAILABLE, after every retry."""

    retryable = True


class RequestTimeoutError(SpladeError, TimeoutError):
    """No answer within the client's timeout. Not retried on the same server (it may still be
    working on it); with several, the request goes to another first and this one is left out."""


class ProtocolError(SpladeError):
    """Something answered, but not as a Triton server of the chosen protocol (e.g. a gRPC port given as HTTP)."""


class ServerError(SpladeError):
    """Any other server-side failure (INTERNAL, ...), with the server's message."""
