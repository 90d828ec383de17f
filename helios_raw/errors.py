"""Errors a client can see, as OpenAI error objects.

Every error the server answers with is an :class:`APIError`: an HTTP status plus the four fields
of OpenAI's error object ``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

from typing import Optional

import orjson


class APIError(Exception):
    """An error answered to the client as ``{"error": {...}}`` with ``status``.

    ``headers`` are extra response headers (``Allow`` on 405, ``Retry-After`` on 429 ...).
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: Optional[str] = None,
        code: Optional[str] = None,
        headers: Optional[list[tuple[str, str]]] = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or []

    def to_dict(self) -> dict:
        """The OpenAI error object."""
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def to_json(self) -> bytes:
        return orjson.dumps(self.to_dict())


def bad_request(message: str, param: Optional[str] = None, code: Optional[str] = None) -> APIError:
    """A 400 ``invalid_request_error`` naming the offending ``param``."""
    return APIError(400, message, param=param, code=code)


def server_error(message: str = "The server had an error while processing your request.") -> APIError:
    """A 500 whose message reveals nothing of the server's internals."""
    return APIError(500, message, type="server_error", code="internal_error")


def shutting_down() -> APIError:
    """A 503: the server is stopping and takes no new work."""
    return APIError(503, "The server is shutting down.", type="server_error", code="server_shutting_down")


def model_loading() -> APIError:
    """A 503 with ``Retry-After``: the model is not loaded yet."""
    return APIError(503, "The model is still loading; try again in a moment.", type="server_error",
                    code="model_loading", headers=[("retry-after", "1")])


def model_unavailable() -> APIError:
    """A 503: the model failed to load (or was closed) and will not serve."""
    return APIError(503, "The model failed to load; see the server log.", type="server_error",
                    code="model_unavailable")


def model_not_found(model: str) -> APIError:
    """A 404 for a model this server does not serve, as OpenAI answers it."""
    return APIError(404, f"The model '{model}' does not exist.", param="model", code="model_not_found")
