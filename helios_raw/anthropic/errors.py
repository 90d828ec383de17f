"""Errors in Anthropic's shape: ``{"type": "error", "error": {"type", "message"}}``.

Every :class:`~helios_raw.errors.APIError` of the Messages routes is rendered so, with its status
and extra headers kept and its type named as Anthropic names the status.
"""

from __future__ import annotations

import orjson

from ..errors import APIError
from ..http.response import Response

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
          404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 500: "api_error",
          503: "overloaded_error", 529: "overloaded_error"}


def error_type(status: int) -> str:
    """Anthropic's error type for an HTTP status."""
    if status in _TYPES:
        return _TYPES[status]
    return "invalid_request_error" if status < 500 else "api_error"


def error_object(error: APIError) -> dict:
    return {"type": "error", "error": {"type": error_type(error.status), "message": error.message}}


def render_error(error: APIError) -> Response:
    """The response for ``error`` on an Anthropic route (an ``App`` error renderer)."""
    return Response(orjson.dumps(error_object(error)), error.status, error.headers, "application/json")
