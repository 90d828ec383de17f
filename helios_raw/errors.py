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
