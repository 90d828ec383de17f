"""The remote backend: chat completions answered by an OpenAI-compatible upstream, proxied.

What goes up: the client's request body exactly as it was sent (``ChatRequest.raw``: every
parameter, known to us or not), with ``model`` replaced by the configured ``model_name`` and the
config's ``temperature`` / ``max_tokens`` filling only parameters the client left out (a client's
``max_completion_tokens`` counts as a ``max_tokens``). Headers: ``Authorization: Bearer <api_key>``
whenever a key is configured, whatever the host, then the config's extra ``headers`` (which replace
same-named ones).

What comes back is relayed as the upstream sent it: ids, ``usage`` (streamed usage chunks too, for
``stream_options.include_usage``), ``system_fingerprint`` and ``model``, which is therefore the
upstream's own model id (OpenAI, for one, answers ``gpt-4o-mini`` with a dated id such as
``gpt-4o-mini-2024-07-18``). ``/v1/models`` lists the configured ``model_name`` only; the upstream
is not asked.

Streams are relayed event by event as the upstream's bytes arrive: events are cut at line ends
(LF or CRLF) in the byte stream, so events and UTF-8 characters split between network reads come
through whole, and nothing is buffered beyond the event being read. The upstream's ``[DONE]`` ends
the relay (the handler writes ours); an upstream error event ends it with that error.

Failures are OpenAI error objects: an upstream 4xx keeps its status, message, type, param and code;
an upstream 5xx, a refused or broken connection, or a malformed answer is a 502; a connect or read
timeout is a 504. In a stream that has started they arrive as an error event before ``[DONE]``.
When our client goes away (its connection lost, or ``cancel`` set), the upstream connection is
closed at once, which is how an upstream learns to stop generating.

Other routes can be passed straight through with :meth:`RemoteBackend.forward` (the Responses
routes do so when ``responses_passthrough`` is set): the body goes to the same path under
``base_url`` with only ``model`` replaced, and the answer (a JSON object, or every event of a
stream, names kept) comes back untouched, with the same error mapping.

Concurrent requests run in parallel over a pool of keep-alive connections (at most
``max_connections`` to the upstream); there is no lock.
"""

from __future__ import annotations

import logging
import ssl
from typing import Awaitable, Callable, Optional
from urllib.parse import urlsplit

import orjson

from ..cancel import Cancellation
from ..config import RemoteConfig
from ..errors import APIError
from ..http.client import (
    ClientResponse,
    ConnectTimeout,
    HTTPClient,
    HTTPClientError,
    ReadTimeout,
)
from ..openai.schema import ChatRequest
from ..sink import ChunkSink
from .base import Backend, BackendError, ChunkStream

log = logging.getLogger("helios_raw.remote")

#: Bytes of an upstream error body read to build the error we answer with.
_ERROR_BODY_LIMIT = 64 * 1024
#: Bytes one upstream event may grow to before the stream is given up as malformed.
_MAX_EVENT_BYTES = 8 * 1024 * 1024
#: Seconds the upstream gets to end its body after ``[DONE]`` before its connection is closed.
_TAIL_TIMEOUT = 1.0


class RemoteBackend(Backend):
    """Serves ``config.model_name`` by proxying to ``config.base_url`` (see the module docstring).

    ``ssl_context`` replaces the default TLS context (the system's trust store, which also honours
    ``SSL_CERT_FILE``), for an upstream whose certificate another CA signed.
    """

    owned_by = "remote"
    relays_requests = True

    def __init__(self, config: RemoteConfig, ssl_context: Optional[ssl.SSLContext] = None) -> None:
        super().__init__()
        self.config = config
        self.model_id = config.model_name
        self.completions_url = _completions_url(config)
        if config.max_connections < 1:
            raise BackendError(f"[{config.section}] max_connections must be at least 1.")
        if config.connect_timeout <= 0 or config.read_timeout <= 0:
            raise BackendError(f"[{config.section}] connect_timeout and read_timeout must be positive.")
        self.client = HTTPClient(
            max_connections=config.max_connections,
            connect_timeout=config.connect_timeout,
            read_timeout=config.read_timeout,
            ssl_context=ssl_context,
            user_agent="helios_raw",
        )
        self._headers = self._build_headers()

    def health(self) -> dict:
        return {"model": self.model_id, "backend_state": self.state, "backend": "remote"}

    async def close(self) -> None:
        await self.client.aclose()

    # -- the contract ------------------------------------------------------------------------

    async def complete(self, request: ChatRequest, cancel: Cancellation) -> dict:
        return await cancel.guard(self._complete(request))

    async def open_stream(self, request: ChatRequest, cancel: Cancellation) -> ChunkStream:
        response = await cancel.guard(self._send(request, stream=True))
        self._check_event_stream(response)
        return RemoteStream(response, cancel, self)

    # -- requests ----------------------------------------------------------------------------

    def upstream_body(self, request: ChatRequest) -> dict:
        """The body sent upstream: the client's, ``model`` replaced, config defaults in the gaps."""
        body = dict(request.raw)
        body["model"] = self.config.model_name
        if self.config.temperature is not None and body.get("temperature") is None:
            body["temperature"] = self.config.temperature
        if self.config.max_tokens is not None and body.get("max_tokens") is None \
                and body.get("max_completion_tokens") is None:
            body["max_tokens"] = self.config.max_tokens
        return body

    async def _complete(self, request: ChatRequest) -> dict:
        body, completion = await self._read_object(await self._send(request, stream=False))
        if completion.get("error") and "choices" not in completion:
            message = _parse_error_body(body)[0] or "no message"
            raise self._bad_gateway(f"The upstream reported an error: {message}")
        return completion

    async def _read_object(self, response: ClientResponse) -> tuple[bytes, dict]:
        """The body of ``response`` and the JSON object it holds (a 502 if it holds none)."""
        try:
            body = await response.read()
        except HTTPClientError as exc:
            raise self._transport_error(exc) from None
        finally:
            response.close()
        try:
            obj = orjson.loads(body)
        except orjson.JSONDecodeError:
            obj = None
        if not isinstance(obj, dict):
            raise self._bad_gateway("The upstream answered with a body that is not a JSON object.")
        return body, obj

    # -- other routes passed through -----------------------------------------------------------

    async def forward(self, method: str, path: str, body: Optional[dict], cancel: Cancellation):
        """Pass a request of another route (``path`` under ``base_url``, e.g. ``/responses``)
        straight through: ``body`` goes up with ``model`` replaced and config defaults left out.
        The answer is the upstream's JSON object, or for ``"stream": true`` an
        :class:`EventRelay`; upstream errors are mapped as on the chat route."""
        stream = bool(body and body.get("stream") is True)
        data = b""
        if body is not None:
            data = orjson.dumps({**body, "model": self.config.model_name})
        url = self.completions_url[:-len("/chat/completions")] + path
        response = await cancel.guard(self._request(method, url, data, stream))
        if stream:
            self._check_event_stream(response)
            return EventRelay(response, cancel, self)
        return (await cancel.guard(self._read_object(response)))[1]

    def _check_event_stream(self, response: ClientResponse) -> None:
        content_type = (response.header("content-type") or "text/event-stream").lower()
        if not content_type.startswith("text/event-stream"):
            response.close()
            raise self._bad_gateway(f"The upstream answered a streamed request with {content_type!r}, "
                                    "not an event stream.")

    async def _send(self, request: ChatRequest, stream: bool) -> ClientResponse:
        """POST the request; the response once its head has arrived with a 2xx status."""
        return await self._request("POST", self.completions_url, orjson.dumps(self.upstream_body(request)), stream)

    async def _request(self, method: str, url: str, body: bytes, stream: bool) -> ClientResponse:
        """Send one request upstream; the response once its head has arrived with a 2xx status."""
        headers = self._headers[stream]
        try:
            response = await self.client.request(method, url, headers, body)
        except HTTPClientError as exc:
            raise self._transport_error(exc) from None
        if 200 <= response.status < 300:
            return response
        try:
            error_body = await response.read(_ERROR_BODY_LIMIT)
        except HTTPClientError:
            error_body = b""
        finally:
            response.close()
        raise self._status_error(response, error_body)

    def _build_headers(self) -> dict:
        """The request headers for ``stream`` False and True."""
        common = [("content-type", "application/json")]
        if self.config.api_key:
            common.append(("authorization", f"Bearer {self.config.api_key}"))
        extra = [(str(name).lower(), str(value)) for name, value in self.config.headers.items()]
        names = {name for name, _ in extra}
        by_mode = {}
        for stream in (False, True):
            accept = ("accept", "text/event-stream" if stream else "application/json")
            by_mode[stream] = [h for h in [accept] + common if h[0] not in names] + extra
        return by_mode

    # -- errors ------------------------------------------------------------------------------

    def _status_error(self, response: ClientResponse, body: bytes) -> APIError:
        """The error a client sees for an upstream's non-2xx answer."""
        message, type_, param, code = _parse_error_body(body)
        status = response.status
        if 400 <= status < 500:
            headers = [("retry-after", response.header("retry-after"))] if response.header("retry-after") else []
            return APIError(status, message or f"The upstream refused the request ({status} {response.reason}).",
                            type=type_ or "invalid_request_error", param=param, code=code, headers=headers)
        log.warning("upstream %s answered %d: %s", self.completions_url, status, message or body[:200])
        detail = f": {message}" if message else "."
        return self._bad_gateway(f"The upstream server failed with status {status}{detail}")

    def _transport_error(self, exc: HTTPClientError) -> APIError:
        log.warning("upstream %s: %s", self.completions_url, exc)
        if isinstance(exc, ConnectTimeout):
            return APIError(504, f"Could not connect to the upstream server within "
                                 f"{self.config.connect_timeout:g} seconds.",
                            type="server_error", code="upstream_timeout")
        if isinstance(exc, ReadTimeout):
            return APIError(504, f"The upstream server sent nothing for {self.config.read_timeout:g} seconds.",
                            type="server_error", code="upstream_timeout")
        return self._bad_gateway(f"The upstream server is unreachable or broke the connection ({_plain(exc)}).")

    @staticmethod
    def _bad_gateway(message: str) -> APIError:
        return APIError(502, message, type="server_error", code="bad_gateway")


class RemoteStream(ChunkStream):
    """An upstream event stream whose head has arrived; :meth:`run` relays its events."""

    def __init__(self, response: ClientResponse, cancel: Cancellation, backend: RemoteBackend) -> None:
        self.response = response
        self.cancel = cancel
        self.backend = backend

    async def run(self, sink: ChunkSink) -> None:
        try:
            await self.cancel.guard(self._relay(sink))
        finally:
            self.response.close()

    async def _relay(self, sink: ChunkSink) -> None:
        decoder = SSEDecoder(_MAX_EVENT_BYTES)
        try:
            async for piece in self.response.iter_bytes():
                for name, data in decoder.feed(piece):
                    if data == b"[DONE]":
                        await self._finish_body()
                        return
                    if name == "error" or b'"error"' in data:
                        _raise_if_error(name, data)
                    sink.send_json(data)
                await sink.drain()
        except HTTPClientError as exc:
            raise self.backend._transport_error(exc) from None
        except MalformedStream as exc:
            raise self.backend._bad_gateway(str(exc)) from None
        # The body ended without [DONE]: a complete body is an ended stream.

    async def _finish_body(self) -> None:
        """Read what follows ``[DONE]`` (normally just the end of the body) so the connection can
        be reused; an upstream that keeps the body open is cut off."""
        self.response.read_timeout = min(self.response.read_timeout, _TAIL_TIMEOUT)
        try:
            await self.response.read(_ERROR_BODY_LIMIT)
        except HTTPClientError:
            pass


class EventRelay:
    """An upstream event stream of another API whose head has arrived; :meth:`run` hands each
    event, name and data untouched, to ``forward(name, data)`` until the upstream's body ends."""

    def __init__(self, response: ClientResponse, cancel: Cancellation, backend: RemoteBackend) -> None:
        self.response = response
        self.cancel = cancel
        self.backend = backend

    async def run(self, forward: Callable[[str, bytes], None], drain: Callable[[], Awaitable[None]]) -> None:
        try:
            await self.cancel.guard(self._relay(forward, drain))
        finally:
            self.response.close()

    async def _relay(self, forward: Callable[[str, bytes], None], drain: Callable[[], Awaitable[None]]) -> None:
        decoder = SSEDecoder(_MAX_EVENT_BYTES)
        try:
            async for piece in self.response.iter_bytes():
                for name, data in decoder.feed(piece):
                    forward(name, data)
                await drain()
        except HTTPClientError as exc:
            raise self.backend._transport_error(exc) from None
        except MalformedStream as exc:
            raise self.backend._bad_gateway(str(exc)) from None


class MalformedStream(Exception):
    """The upstream's event stream cannot be decoded."""


class SSEDecoder:
    """Server-Sent Events from bytes that arrive in arbitrary pieces.

    :meth:`feed` returns the ``(event name, data)`` of every event completed by the piece: ``data``
    is the event's ``data:`` lines joined with ``\\n`` (bytes, undecoded, so a UTF-8 character
    split between pieces is never cut); the name is ``"message"`` unless an ``event:`` line set it.
    Comment lines (``:...``) and other fields are skipped; lines end in LF or CRLF.
    """

    __slots__ = ("_partial", "_data", "_name", "_limit")

    def __init__(self, limit: int = _MAX_EVENT_BYTES) -> None:
        self._partial = b""
        self._data: list[bytes] = []
        self._name = "message"
        self._limit = limit

    def feed(self, piece: bytes) -> list[tuple[str, bytes]]:
        if self._partial:
            piece = self._partial + piece
        lines = piece.split(b"\n")
        self._partial = lines.pop()
        if len(self._partial) > self._limit:
            raise MalformedStream(f"The upstream sent an event line longer than {self._limit} bytes.")
        events = []
        for line in lines:
            if line[-1:] == b"\r":
                line = line[:-1]
            if not line:
                if self._data:
                    events.append((self._name, b"\n".join(self._data)))
                self._data = []
                self._name = "message"
                continue
            if line[:1] == b":":
                continue
            field, _, value = line.partition(b":")
            if value[:1] == b" ":
                value = value[1:]
            if field == b"data":
                self._data.append(value)
            elif field == b"event":
                self._name = value.decode("utf-8", "replace")
        return events


def _raise_if_error(name: str, data: bytes) -> None:
    """Raise the APIError an upstream error event carries (OpenAI's ``{"error": {...}}``)."""
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        if name == "error":
            raise APIError(502, f"The upstream reported an error: {data[:500].decode('utf-8', 'replace')}",
                           type="server_error", code="upstream_error") from None
        raise MalformedStream("The upstream sent an event that is not JSON.") from None
    if not isinstance(obj, dict) or (name != "error" and not obj.get("error")):
        return
    message, type_, param, code = _parse_error_body(data)
    raise APIError(502, message or "The upstream reported an error mid-stream.",
                   type=type_ or "server_error", param=param, code=code or "upstream_error")


def _parse_error_body(body: bytes) -> tuple[Optional[str], Optional[str], Optional[str], Optional[str]]:
    """``(message, type, param, code)`` from an upstream error body, whatever its dialect:
    OpenAI's ``{"error": {...}}``, ``{"error": "text"}``, vLLM's flat ``{"message", "type", ...}``,
    ``{"detail": ...}``, or plain text."""
    try:
        obj = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        text = body[:500].decode("utf-8", "replace").strip()
        return (text or None), None, None, None
    if not isinstance(obj, dict):
        return None, None, None, None
    error = obj.get("error", obj)
    if isinstance(error, str):
        return error, None, None, None
    if not isinstance(error, dict):
        return None, None, None, None
    message = error.get("message", error.get("detail"))
    if message is not None and not isinstance(message, str):
        message = orjson.dumps(message).decode()
    return message, _opt_str(error.get("type")), _opt_str(error.get("param")), _opt_str(error.get("code"))


def _opt_str(value) -> Optional[str]:
    return None if value is None else str(value)


def _plain(exc: HTTPClientError) -> str:
    """Why an HTTP client error happened, without the upstream's address, as a clause."""
    reason = exc.reason.rstrip(".")
    return reason[:1].lower() + reason[1:]


def _completions_url(config: RemoteConfig) -> str:
    """``<base_url>/chat/completions``; BackendError if ``base_url`` is not an http(s) URL."""
    base_url = config.base_url
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BackendError(f"[{config.section}] base_url {base_url!r} must be an http:// or https:// URL with a host.")
    try:
        parts.port
    except ValueError:
        raise BackendError(f"[{config.section}] base_url {base_url!r} has a bad port.") from None
    return base_url.rstrip("/") + "/chat/completions"
