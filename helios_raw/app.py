"""The application the HTTP protocol calls: CORS, API key, routing, access log.

:class:`App` owns a :class:`~helios_raw.http.router.Router`; every request goes through
:meth:`App.handle`, in this order: CORS preflight (answered before any key check), API key,
route lookup (404 / 405), the route's handler.
"""

from __future__ import annotations

import hmac
import inspect
import logging
import re
import time
from typing import Awaitable, Callable, Iterable, Optional

import orjson

from .errors import APIError
from .http.request import Request, new_request_id
from .http.response import Response
from .http.router import Route, Router
from .logs import ACCESS_FORMATS, UTCTime

#: Turns an error into the response a client of some API expects (``error_response`` by default).
ErrorRenderer = Callable[[APIError], Response]

access_log = logging.getLogger("helios_raw.access")
error_log = logging.getLogger("helios_raw.error")

_ALLOWED_HEADERS = (b"authorization, x-api-key, content-type, accept, anthropic-version, anthropic-beta, "
                    b"openai-organization, openai-project, x-stainless-*")
_ALLOW_ANY = (b"access-control-allow-origin", b"*")
#: A preflight's list of header names, echoed back when it is one (else the list above is sent).
_HEADER_NAMES = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+(?:[ \t]*,[ \t]*[!#$%&'*+.^_`|~0-9A-Za-z-]+)*")
_PUBLIC_PATHS = frozenset({"/health"})
_ACCESS_FORMAT = '%s - "%s %s HTTP/%s" %d %d %.1fms %s'
_access_time = UTCTime()


class App:
    """Dispatches requests to routes. ``cors_origins`` is ``["*"]`` (any) or a list of origins;
    ``api_key`` (if set) is required as ``Authorization: Bearer <key>`` on every route but
    ``/health``. The access log is one line a request, ``text`` or ``json`` (see
    :meth:`log_access`)."""

    def __init__(self, api_key: Optional[str] = None, cors_origins: Iterable[str] = ("*",),
                 access_log_enabled: bool = True, access_log_format: str = "text") -> None:
        if access_log_format not in ACCESS_FORMATS:
            raise ValueError(f"access_log_format must be one of {', '.join(ACCESS_FORMATS)}, not {access_log_format!r}")
        self.router = Router()
        self.api_key = api_key.encode() if api_key else None
        origins = list(cors_origins)
        self.cors_any = "*" in origins
        self.cors_origins = {o.rstrip("/").encode("latin-1") for o in origins if o != "*"}
        self.access_log_enabled = access_log_enabled
        #: Called as ``on_access(request, status, seconds)`` for every answered request (metrics).
        self.on_access: Optional[Callable[[Request, int, float], None]] = None
        self.access_json = access_log_format == "json"
        self._renderers: list[tuple[str, ErrorRenderer]] = []

    # -- routes ------------------------------------------------------------------------------

    def add_route(self, method: str, path: str, handler, *, description: str = "") -> None:
        """Add a route; see :class:`~helios_raw.http.router.Route` for the handler contract."""
        self.router.add(Route(method.upper(), path, handler, description))

    @property
    def routes(self) -> list[Route]:
        return self.router.routes

    def render_errors(self, path_prefix: str, renderer: ErrorRenderer) -> None:
        """Answer every error of a request under ``path_prefix`` (key, routing or handler errors,
        until its response starts) with ``renderer``: an API whose clients expect another error
        shape than OpenAI's registers one."""
        self._renderers.append((path_prefix, renderer))

    # -- the protocol's interface ------------------------------------------------------------

    def handle(self, request: Request):
        if request.method == "OPTIONS":
            return self._preflight(request)
        renderer = self._renderer_for(request.path) if self._renderers else None
        if renderer is None:
            return self._route(request)
        try:
            result = self._route(request)
        except APIError as exc:
            return renderer(exc)
        return _rendered(result, renderer) if inspect.isawaitable(result) else result

    def _route(self, request: Request):
        if self.api_key is not None and request.path not in _PUBLIC_PATHS:
            self._check_key(request)
        route, params = self.router.match(request.method, request.segments, request.path)
        request.params, request.route = params, route.template
        return route.handler(request)

    def _renderer_for(self, path: str) -> Optional[ErrorRenderer]:
        for prefix, renderer in self._renderers:
            if path.startswith(prefix):
                return renderer
        return None

    def response_headers(self, request: Optional[Request]) -> list:
        """The headers of every response, errors and streams included: CORS; ``x-request-id``,
        the request's id (a fresh one when no request could be parsed); and, as OpenAI sends it,
        ``openai-processing-ms``, the milliseconds from the request's head to this response's."""
        if request is None:
            headers = [(b"x-request-id", new_request_id().encode())]
        else:
            headers = [(b"x-request-id", request.id.encode()),
                       (b"openai-processing-ms", b"%d" % ((time.perf_counter() - request.started) * 1000.0))]
        if self.cors_any:
            headers.insert(0, _ALLOW_ANY)
            return headers
        origin = _origin(request)
        if origin is not None and origin in self.cors_origins:
            return [(b"access-control-allow-origin", origin), (b"vary", b"Origin")] + headers
        return [(b"vary", b"Origin")] + headers

    def log_access(self, request: Request, status: int, sent: int, seconds: float) -> None:
        """One line: ``client - "METHOD target HTTP/v" status bytes 1.2ms request-id``, or as JSON an object
        with ``time``, ``client``, ``request_id``, ``method``, ``target``, ``http_version``,
        ``status``, ``bytes`` and ``ms``."""
        if self.on_access is not None:
            self.on_access(request, status, seconds)
        if not (self.access_log_enabled and access_log.isEnabledFor(logging.INFO)):
            return
        client = request.client
        address = f"{client[0]}:{client[1]}" if client else "-"
        if self.access_json:
            message, args = orjson.dumps({
                "time": _access_time.format(time.time()), "client": address, "request_id": request.id,
                "method": request.method, "target": request.target.decode("latin-1"),
                "http_version": request.http_version, "status": status, "bytes": sent,
                "ms": round(seconds * 1000.0, 1),
            }).decode(), None
        else:
            message, args = _ACCESS_FORMAT, (address, request.method, request.target.decode("latin-1"),
                                             request.http_version, status, sent, seconds * 1000.0, request.id)
        # makeRecord + handle: logging's own path minus the stack walk that finds the caller,
        # which for an access line is always this method.
        record = access_log.makeRecord(access_log.name, logging.INFO, __file__, 0, message, args, None, "log_access")
        record.request_id = request.id
        record.request_tag = ""  # the line names its request itself
        access_log.handle(record)

    def log_error(self, message: str, exc: Optional[BaseException]) -> None:
        if exc is None:
            error_log.warning(message)
        else:
            error_log.error(message, exc_info=exc)

    # -- helpers -----------------------------------------------------------------------------

    def _preflight(self, request: Request) -> Response:
        requested = request.header("access-control-request-headers")
        headers = [
            ("access-control-allow-methods", "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),
            ("access-control-allow-headers",
             requested if requested and _HEADER_NAMES.fullmatch(requested) else _ALLOWED_HEADERS.decode()),
            ("access-control-max-age", "600"),
        ]
        return Response(b"", 204, headers)

    def _check_key(self, request: Request) -> None:
        given = b""
        for name, value in request.headers:
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                if scheme.lower() == b"bearer":
                    given = token.strip()
                break
            if name == b"x-api-key":  # what Anthropic's clients send
                given = value.strip()
                break
        if not hmac.compare_digest(given, self.api_key):
            raise APIError(
                401,
                "Incorrect or missing API key; send it as 'Authorization: Bearer <key>' or 'x-api-key: <key>'.",
                code="invalid_api_key",
                headers=[("www-authenticate", "Bearer")],
            )


async def _rendered(result: Awaitable, renderer: ErrorRenderer):
    try:
        return await result
    except APIError as exc:
        return renderer(exc)


def _origin(request: Optional[Request]) -> Optional[bytes]:
    if request is None:
        return None
    for name, value in request.headers:
        if name == b"origin":
            return value.rstrip(b"/")
    return None
