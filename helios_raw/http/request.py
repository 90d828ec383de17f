"""The request a handler sees, and the signal that its answer is no longer wanted."""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Optional, TypeVar
from urllib.parse import parse_qsl, unquote

import orjson

from ..errors import APIError
from .response import ClientGone

T = TypeVar("T")


class Cancellation:
    """Set once, when the answer to a request is no longer wanted.

    That happens when the client goes away (EOF or a broken connection) or when a graceful shutdown
    reaches its deadline. Worker threads poll :meth:`is_set` (a plain flag: reading it is safe from
    any thread); coroutines ``await wait()``. :meth:`set` must be called on the event loop's thread.
    """

    __slots__ = ("_set", "_future", "reason")

    def __init__(self) -> None:
        self._set = False
        self._future: Optional[asyncio.Future] = None
        self.reason = ""

    def is_set(self) -> bool:
        return self._set

    def set(self, reason: str = "client disconnected") -> None:
        if self._set:
            return
        self.reason = reason
        self._set = True
        if self._future is not None and not self._future.done():
            self._future.set_result(None)

    async def wait(self) -> None:
        if self._set:
            return
        if self._future is None:
            self._future = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._future)

    async def guard(self, work: Awaitable[T]) -> T:
        """The result of ``work``; if this is set first, ``work`` is cancelled (releasing what it
        holds, such as an upstream connection) and :class:`ClientGone` is raised."""
        if self.is_set():
            if asyncio.iscoroutine(work):
                work.close()
            raise ClientGone()
        task = asyncio.ensure_future(work)
        watcher = asyncio.ensure_future(self.wait())
        try:
            await asyncio.wait((task, watcher), return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            task.cancel()
            raise
        finally:
            watcher.cancel()
        if task.done():
            return task.result()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        raise ClientGone()


class Request:
    """One HTTP request, fully received.

    ``headers`` is h11's list of ``(name, value)`` byte pairs, names lower-cased. ``params`` holds
    the path parameters the route matched. ``cancelled`` is set when the answer is no longer wanted.
    """

    __slots__ = (
        "method", "target", "path", "query_string", "headers", "body", "params", "client",
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
        self.path = unquote(raw_path.decode("latin-1"))
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
