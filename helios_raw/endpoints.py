"""Custom endpoints: static JSON or a handler, declared in TOML or in Python.

TOML (``--custom-endpoints FILE``, or ``[[endpoints]]`` in the config)::

    [[endpoints]]
    method = "GET"            # GET, POST, PUT, DELETE or PATCH
    path = "/api/version"     # {name} or :name segments become path parameters
    response = { version = "1.0" }
    status_code = 200         # optional

Python::

    from helios_raw import EndpointBuilder, EndpointResponse, get

    version = get("/api/version", {"version": "1.0"})
    echo = (EndpointBuilder.post("/api/echo/{name}")
            .handle(lambda req: EndpointResponse.ok({"name": req.params["name"], "body": req.body}))
            .description("Echo the body").build())

A handler (sync or async) receives an :class:`EndpointRequest` and returns an
:class:`EndpointResponse`, any JSON value (answered 200), or a :class:`~helios_raw.Response`.
Sync handlers run in a worker thread, so a slow one never stalls other connections.
"""

from __future__ import annotations

import asyncio
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import orjson

from .cancel import Cancellation
from .config import ConfigError, read_toml
from .errors import APIError
from .http.request import Request
from .http.response import JSONResponse, Response, StreamingResponse

METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH")


@dataclass
class EndpointRequest:
    """What a custom handler sees: ``query`` and ``params`` (path parameters) as dicts of strings,
    ``body`` as parsed JSON (None when empty or not JSON; ``raw_body`` keeps the bytes),
    ``headers`` as a dict with lower-case names. ``cancelled`` is set once the answer is no longer
    wanted (the client left, or a shutdown deadline passed): a long handler may poll
    ``cancelled.is_set()`` and stop early."""

    method: str
    path: str
    query: dict
    params: dict
    body: Any
    headers: dict
    raw_body: bytes = b""
    cancelled: Cancellation = field(default_factory=Cancellation)


class EndpointResponse:
    """A status and a JSON body. Build one with the class methods."""

    __slots__ = ("status", "body", "headers")

    def __init__(self, status: int, body: Any, headers: Optional[dict] = None) -> None:
        self.status = status
        self.body = body
        self.headers = headers or {}

    @classmethod
    def ok(cls, body: Any) -> "EndpointResponse":
        return cls(200, body)

    @classmethod
    def created(cls, body: Any) -> "EndpointResponse":
        return cls(201, body)

    @classmethod
    def accepted(cls, body: Any) -> "EndpointResponse":
        return cls(202, body)

    @classmethod
    def with_status(cls, status: int, body: Any) -> "EndpointResponse":
        _check_status(status, "with_status")
        return cls(status, body)

    @classmethod
    def bad_request(cls, message: str) -> "EndpointResponse":
        return cls(400, APIError(400, message).to_dict())

    @classmethod
    def not_found(cls, message: str) -> "EndpointResponse":
        return cls(404, APIError(404, message, code="not_found").to_dict())

    @classmethod
    def internal_error(cls, message: str) -> "EndpointResponse":
        return cls(500, APIError(500, message, type="server_error").to_dict())

    def to_response(self) -> Response:
        return JSONResponse(self.body, self.status, list(self.headers.items()))


Handler = Callable[[EndpointRequest], Any]


@dataclass
class CustomEndpoint:
    """One endpoint: ``method`` and ``path``, answered with ``response`` (static JSON, status
    ``status_code``) or by ``handler``."""

    method: str
    path: str
    response: Any = None
    status_code: int = 200
    handler: Optional[Handler] = None
    description: str = ""
    _static: Optional[Response] = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.method = self.method.upper()
        if self.method not in METHODS:
            raise ValueError(f"endpoint {self.path}: method {self.method!r} is not one of {', '.join(METHODS)}")
        if not isinstance(self.path, str) or not self.path.startswith("/"):
            raise ValueError(f"endpoint path {self.path!r} must be a string starting with '/'")
        _check_status(self.status_code, f"endpoint {self.method} {self.path}")
        if self.handler is None:
            try:
                self._static = Response(orjson.dumps(self.response), self.status_code, content_type="application/json")
            except TypeError as exc:
                raise ValueError(f"endpoint {self.method} {self.path}: response is not JSON: {exc}") from None

    def install(self, app) -> None:
        """Add this endpoint's route to ``app``."""
        if self._static is not None:
            static = self._static
            app.add_route(self.method, self.path, lambda request: static,
                          description=self.description)
        else:
            app.add_route(self.method, self.path, self._call, description=self.description)

    async def _call(self, request: Request) -> Response:
        view = _view(request)
        if inspect.iscoroutinefunction(self.handler):
            result = await self.handler(view)
        else:
            result = await asyncio.to_thread(self.handler, view)
            if inspect.isawaitable(result):
                result = await result
        return _to_response(result)


class EndpointBuilder:
    """Fluent construction: ``EndpointBuilder.get("/x").json({...}).build()`` or ``.handle(fn)``."""

    def __init__(self, method: str, path: str) -> None:
        self._method = method
        self._path = path
        self._response: Any = None
        self._status = 200
        self._handler: Optional[Handler] = None
        self._description = ""

    @classmethod
    def get(cls, path: str) -> "EndpointBuilder":
        return cls("GET", path)

    @classmethod
    def post(cls, path: str) -> "EndpointBuilder":
        return cls("POST", path)

    @classmethod
    def put(cls, path: str) -> "EndpointBuilder":
        return cls("PUT", path)

    @classmethod
    def delete(cls, path: str) -> "EndpointBuilder":
        return cls("DELETE", path)

    @classmethod
    def patch(cls, path: str) -> "EndpointBuilder":
        return cls("PATCH", path)

    def json(self, body: Any) -> "EndpointBuilder":
        self._response = body
        return self

    def status(self, status_code: int) -> "EndpointBuilder":
        self._status = status_code
        return self

    def handle(self, handler: Handler) -> "EndpointBuilder":
        self._handler = handler
        return self

    def description(self, text: str) -> "EndpointBuilder":
        self._description = text
        return self

    def build(self) -> CustomEndpoint:
        return CustomEndpoint(self._method, self._path, self._response, self._status, self._handler,
                              self._description)


def get(path: str, json: Any) -> CustomEndpoint:
    return CustomEndpoint("GET", path, json)


def post(path: str, json: Any) -> CustomEndpoint:
    return CustomEndpoint("POST", path, json)


def put(path: str, json: Any) -> CustomEndpoint:
    return CustomEndpoint("PUT", path, json)


def delete(path: str, json: Any) -> CustomEndpoint:
    return CustomEndpoint("DELETE", path, json)


def patch(path: str, json: Any) -> CustomEndpoint:
    return CustomEndpoint("PATCH", path, json)


def endpoints_from_toml(path: str) -> list[CustomEndpoint]:
    """The ``[[endpoints]]`` of a TOML file; any problem is a ConfigError naming the entry."""
    return endpoints_from_list(read_toml(path).get("endpoints", []), path)


def endpoints_from_list(entries: Any, where: str) -> list[CustomEndpoint]:
    if not isinstance(entries, list):
        raise ConfigError(f"'endpoints' in {where} must be an array of tables ([[endpoints]]).")
    result = []
    for i, entry in enumerate(entries):
        label = f"endpoint #{i + 1} in {where}"
        if not isinstance(entry, dict):
            raise ConfigError(f"{label} must be a table.")
        unknown = sorted(set(entry) - {"method", "path", "response", "status_code", "description"})
        if unknown:
            raise ConfigError(f"{label} has an unknown key {unknown[0]!r}.")
        for key in ("method", "path"):
            if not isinstance(entry.get(key), str):
                raise ConfigError(f"{label} needs a string '{key}'.")
        if "response" not in entry:
            raise ConfigError(f"{label} needs a 'response' (any JSON value).")
        status = entry.get("status_code", 200)
        if isinstance(status, bool) or not isinstance(status, int):
            raise ConfigError(f"{label}: status_code must be an integer, not {status!r}.")
        try:
            result.append(CustomEndpoint(entry["method"], entry["path"], entry["response"], status,
                                         description=str(entry.get("description", ""))))
        except ValueError as exc:
            raise ConfigError(f"{label}: {exc}.") from None
    return result


def _check_status(status: Any, where: str) -> None:
    if isinstance(status, bool) or not isinstance(status, int) or not 200 <= status <= 599 or status in (204, 304):
        raise ValueError(f"{where}: status {status!r} is not a status with a JSON body (200-599, not 204/304)")


def _view(request: Request) -> EndpointRequest:
    body = None
    if request.body:
        try:
            body = orjson.loads(request.body)
        except orjson.JSONDecodeError:
            content_type = request.header("content-type", "")
            if "json" in content_type:
                raise APIError(400, "The request body is not valid JSON.", code="invalid_json") from None
    headers = {}
    for name, value in request.headers:
        key = name.decode("latin-1")
        headers[key] = f"{headers[key]}, {value.decode('latin-1')}" if key in headers else value.decode("latin-1")
    return EndpointRequest(request.method, request.path, request.query, dict(request.params), body, headers,
                           request.body, request.cancelled)


def _to_response(result: Any) -> Response:
    if isinstance(result, EndpointResponse):
        return result.to_response()
    if isinstance(result, (Response, StreamingResponse)):
        return result
    try:
        return JSONResponse(result)
    except TypeError:
        raise TypeError(f"a custom handler returned {type(result).__name__}, which is not JSON") from None
