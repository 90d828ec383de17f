"""The request a handler sees, and the signal that its answer is no longer wanted."""

from __future__ import annotations

import itertools
import os
import time
from typing import Any, Optional
from urllib.parse import parse_qsl, unquote

import orjson

from ..cancel import Cancellation
from ..errors import APIError


class Request:
    """One HTTP request, fully received.

    ``headers`` is h11's list of ``(name, value)`` byte pairs, names lower-cased. ``path`` is the
    target's path percent-decoded (of an absolute URL, the part after its host); ``segments`` are
    what routes match (see :func:`split_path`). ``params`` holds the path parameters the route
    matched. ``id`` names the request in responses (``x-request-id``) and logs: the client's own,
    or :func:`new_request_id`. ``started`` is when its head was parsed (``time.perf_counter()``).
    ``cancelled`` is set when the answer is no longer wanted.
    """

    __slots__ = (
        "method", "target", "path", "segments", "query_string", "headers", "body", "params", "route", "client",
        "http_version", "id", "started", "cancelled", "_query",
    )

    def __init__(
        self,
        method: str,
        target: bytes,
        headers: list,
        body: bytes = b"",
        client: Optional[tuple] = None,
        http_version: str = "1.1",
        request_id: Optional[str] = None,
    ) -> None:
        self.method = method
        self.target = target
        self.started = time.perf_counter()
        self.id = request_id or new_request_id()
        raw_path, _, raw_query = (target if target[:1] == b"/" else origin_form(target)).partition(b"?")
        path = raw_path.decode("latin-1")
        self.path = unquote(path) if "%" in path else path
        self.segments = split_path(path)
        self.query_string = raw_query.decode("latin-1")
        self.headers = headers
        self.body = body
        self.params: dict[str, str] = {}
        #: The template of the route that answers it, once routed.
        self.route: Optional[str] = None
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


def origin_form(target: bytes) -> bytes:
    """The path and query of an absolute-URL target (``http://host/a?b``, which RFC 9112 section
    3.2.2 says a server must accept): what follows its host, or '/' and that. Any other target
    comes back unchanged."""
    scheme, sep, rest = target.partition(b"://")
    if not sep or scheme.lower() not in (b"http", b"https"):
        return target
    end = len(rest)
    for mark in (b"/", b"?"):
        found = rest.find(mark)
        if 0 <= found < end:
            end = found
    tail = rest[end:]
    return tail if tail[:1] == b"/" else b"/" + tail


_ID_PREFIX = ""
_ids = itertools.count()


def _new_id_prefix() -> None:
    global _ID_PREFIX, _ids
    _ID_PREFIX = "req_" + os.urandom(10).hex()
    _ids = itertools.count(1 << 44)  # hex() of which is 12 digits for the next 2**47 requests


_new_id_prefix()
if hasattr(os, "register_at_fork"):  # a forked worker process mints its own ids
    os.register_at_fork(after_in_child=_new_id_prefix)


def new_request_id() -> str:
    """``req_`` and 32 hex digits: a random prefix per process, then a count (cheaper than 16
    random bytes a request, and as unique)."""
    return _ID_PREFIX + hex(next(_ids))[2:]
