"""The request a handler sees, and the signal that its answer is no longer wanted."""

from __future__ import annotations

from typing import Any, Optional
from urllib.parse import parse_qsl, unquote

import orjson

from ..cancel import Cancellation
from ..errors import APIError


class Request:
    """One HTTP request, fully received.

    ``headers`` is h11's list of ``(name, value)`` byte pairs, names lower-cased. ``path`` is the
    target's path percent-decoded; ``segments`` are what routes match (see :func:`split_path`).
    ``params`` holds the path parameters the route matched. ``cancelled`` is set when the answer
    is no longer wanted.
    """

    __slots__ = (
        "method", "target", "path", "segments", "query_string", "headers", "body", "params", "client",
        "http_version", "cancelled", "_query",
    )

    def __init__(
        self,
        method: str,
        target: bytes,
        headers: list,
        body: bytes = b"",
        client: Optional[tuple] = None,
        http_version: str = "1.1",
    ) -> None:
        self.method = method
        self.target = target
        raw_path, _, raw_query = target.partition(b"?")
        path = raw_path.decode("latin-1")
        self.path = unquote(path)
        self.segments = split_path(path)
        self.query_string = raw_query.decode("latin-1")
        self.headers = headers
        self.body = body
        self.params: dict[str, str] = {}
        self.client = client
        self.http_version = http_version
        self.cancelled = Cancellation()
        self._query: Optional[dict[str, str]] = None

    def header(self, name: str, default: Optional[str] = None) -> Optional[str]:
        """The value of header ``name`` (case-insensitive); repeated headers are joined by ``, ``."""
        key = name.lower().encode("latin-1")
        values = [v.decode("latin-1") for k, v in self.headers if k == key]
        return ", ".join(values) if values else default

    @property
    def query(self) -> dict[str, str]:
        """Query parameters, decoded; for a repeated name the last value wins."""
        if self._query is None:
            self._query = dict(parse_qsl(self.query_string, keep_blank_values=True))
        return self._query

    def json(self) -> Any:
        """The body parsed as JSON; an empty body is ``None``. Bad JSON raises a 400 APIError."""
        if not self.body:
            return None
        try:
            return orjson.loads(self.body)
        except orjson.JSONDecodeError as exc:
            raise APIError(
                400,
                f"We could not parse the JSON body of your request: {exc}.",
                code="invalid_json",
            ) from None


def split_path(path: str) -> tuple:
    """The segments of a raw path, each percent-decoded on its own, trailing slashes dropped:
    ``/a%2Fb/c/`` -> ``("a/b", "c")``. An encoded '/' stays inside its segment, where the client's
    URL has it: decoding the path first would route ``/v1/models/org%2Fname`` as four segments."""
    path = path.rstrip("/")
    if not path:
        return ()
    parts = path[1:].split("/")
    if "%" in path:
        return tuple(unquote(part) for part in parts)
    return tuple(parts)
