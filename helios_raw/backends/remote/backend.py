"""The remote backend: chat and text completions and embeddings answered by an OpenAI-compatible
upstream, proxied.

Which models: built with a ``model_id``, the backend serves that one id and sends the configured
``model_name`` upstream. Built without (a ``[remote]`` section, a ``[[models]]`` entry without
``id``), it serves the upstream's own models: ``/v1/models`` lists what the upstream lists (see
:mod:`.catalog`), a request naming one of them is sent with that name, and any other request with
``model_name``.

What goes up: the client's request body exactly as it was sent (every parameter, known to us or
not), with ``model`` replaced as above and, for completions, the config's ``temperature`` /
``max_tokens`` filling only parameters the client left out (a client's ``max_completion_tokens``
counts as a ``max_tokens``). Headers: ``Authorization: Bearer <api_key>`` whenever a key is
configured, whatever the host, then the config's extra ``headers`` (which replace same-named ones).

What comes back is the upstream's answer made exactly OpenAI's shape (see :mod:`.normalise`),
keeping its ids, ``usage``, ``system_fingerprint``, ``model`` (so the upstream's own model id:
OpenAI answers ``gpt-4o-mini`` with a dated id such as ``gpt-4o-mini-2024-07-18``) and the fields
it adds. Streams are relayed event by event as they arrive (see :mod:`.events`).

Failures are OpenAI error objects: an upstream 4xx keeps its status, message, type, param and code
(a number becomes a string), a 501 (the upstream does not serve what was asked) is a 400 with its
message; an upstream 5xx, a refused or broken connection, or a
malformed answer is a 502; a connect or read timeout is a 504. In a stream that has started they
arrive as an error event before ``[DONE]``. When our client goes away (its connection lost, or
``cancel`` set), the upstream connection is closed at once, which is how an upstream learns to
stop generating.

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
from typing import Optional, Union
from urllib.parse import urlsplit

import orjson

from ...cancel import Cancellation
from ...config import RemoteConfig
from ...errors import APIError
from ...http.client import (
    ClientResponse,
    ConnectTimeout,
    HTTPClient,
    HTTPClientError,
    ReadTimeout,
)
from ...openai.completions import CompletionRequest
from ...openai.embeddings import EmbeddingRequest, encode_base64
from ...openai.objects import model_object as plain_model
from ...openai.schema import ChatRequest
from ..base import Backend, BackendError, ChunkStream
from . import normalise
from .catalog import UpstreamCatalog
from .chunks import ChunkNormaliser
from .events import EventRelay, RemoteStream

log = logging.getLogger("helios_raw.remote")
#: Seconds a /health answer may rely on the upstream's last answer before it is asked again.
HEALTH_PROBE_AGE = 5.0

#: Bytes of an upstream error body read to build the error we answer with.
_ERROR_BODY_LIMIT = 64 * 1024
#: ``/v1/models`` status of a model by what the upstream's list says (see :mod:`.catalog`).
_LISTED_STATUS = {"unknown": "loading", "unlisted": "loaded", "error": "failed"}

AnyRequest = Union[ChatRequest, CompletionRequest, EmbeddingRequest]


class RemoteBackend(Backend):
    """Serves an upstream's models by proxying to ``config.base_url`` (see the module docstring).

    ``model_id`` None serves the upstream's own models; else that id alone. ``ssl_context``
    replaces the default TLS context (the system's trust store, which also honours
    ``SSL_CERT_FILE``), for an upstream whose certificate another CA signed.
    """

    owned_by = "remote"
    relays_requests = True

    def __init__(self, config: RemoteConfig, ssl_context: Optional[ssl.SSLContext] = None,
                 model_id: Optional[str] = None) -> None:
        super().__init__()
        self.config = config
        self.mirror = model_id is None
        self.model_id = model_id or config.model_name
        self.base_url = _base_url(config)
        self.completions_url = self.base_url + "/chat/completions"
        if config.max_connections < 1:
            raise BackendError(f"{_where(config)} max_connections must be at least 1.")
        if config.connect_timeout <= 0 or config.read_timeout <= 0 or config.models_refresh < 0:
            raise BackendError(f"{_where(config)} connect_timeout and read_timeout must be positive, "
                               "models_refresh 0 or more.")
        self.client = HTTPClient(
            max_connections=config.max_connections,
            connect_timeout=config.connect_timeout,
            read_timeout=config.read_timeout,
            ssl_context=ssl_context,
            user_agent="helios_raw",
        )
        self._headers = self._build_headers()
        self.catalog = UpstreamCatalog(self)

    def health(self) -> dict:
        return {"model": self.model_id, "backend_state": self.state, "backend": "remote",
                "upstream": self.catalog.state}

    def health_problem(self) -> Optional[APIError]:
        """The upstream is unreachable, as its model list last found (asked again in the
        background when older than ``HEALTH_PROBE_AGE``)."""
        self.catalog.probe(HEALTH_PROBE_AGE)
        if self.catalog.state == "error":
            return APIError(503, f"The upstream is unreachable: {self.catalog.reason}.", type="server_error",
                            code="upstream_unavailable", headers=[("retry-after", "1")])
        return None

    async def start(self) -> None:
        self.catalog.start()

    async def close(self) -> None:
        await self.catalog.close()
        await self.client.aclose()

    # -- models ------------------------------------------------------------------------------

    def model_ids(self) -> list[str]:
        """Mirroring, the upstream's ids (``model_name`` first when listed), or ``model_name``
        until the list is known; else the one id served."""
        if not self.mirror:
            return [self.model_id]
        ids = self.catalog.ids()
        if self.config.model_name in ids:
            ids.remove(self.config.model_name)
            ids.insert(0, self.config.model_name)
        return ids or [self.config.model_name]

    def upstream_model(self, model: str) -> str:
        """The model name sent upstream for a request naming ``model``."""
        if self.mirror and self.catalog.get(model) is not None:
            return model
        return self.config.model_name

    def served_id(self, model: str) -> str:
        return self.upstream_model(model) if self.mirror else self.model_id

    @property
    def context_length(self) -> Optional[int]:
        listed = self.catalog.get(self.config.model_name)
        return listed["context_length"] if listed else None

    @property
    def status(self) -> str:
        """``"loaded"`` when the upstream lists the model (or, mirroring, any model; or has no
        list at all), ``"failed"`` when it does not or can't be asked, ``"loading"`` until it has
        been asked."""
        catalog = self.catalog
        if catalog.state != "ok":
            return _LISTED_STATUS[catalog.state]
        listed = catalog.models if self.mirror else catalog.get(self.config.model_name)
        return "loaded" if listed else "failed"

    async def list_models(self) -> list[dict]:
        await self.catalog.refresh(self.config.models_refresh)
        catalog = self.catalog
        if self.mirror and catalog.models:
            ordered = [catalog.get(model_id) for model_id in self.model_ids()]
            return [{**model, "status": "loaded"} for model in ordered]
        model = plain_model(self.model_id, self.created, self.owned_by)
        model.update(context_length=self.context_length, status=self.status)
        return [model]

    # -- the contract ------------------------------------------------------------------------

    async def complete(self, request: ChatRequest, cancel: Cancellation) -> dict:
        return await cancel.guard(self._completion("/chat/completions", request, "chat"))

    async def open_stream(self, request: ChatRequest, cancel: Cancellation) -> ChunkStream:
        return await cancel.guard(self._stream("/chat/completions", request, "chat", cancel))

    async def complete_text(self, request: CompletionRequest, cancel: Cancellation) -> dict:
        return await cancel.guard(self._completion("/completions", request, "text"))

    async def open_text_stream(self, request: CompletionRequest, cancel: Cancellation) -> ChunkStream:
        return await cancel.guard(self._stream("/completions", request, "text", cancel))

    async def embed(self, request: EmbeddingRequest, cancel: Cancellation) -> dict:
        body = {**request.raw, "model": self.upstream_model(request.model)}
        answer, lossy = await cancel.guard(self._answer("/embeddings", body))
        answer = normalise.embeddings(normalise.mend_all(answer) if lossy else answer, body["model"], "float")
        sizes = {len(item["embedding"]) for item in answer["data"]}
        if request.dimensions is not None and sizes != {request.dimensions}:  # the upstream ignored it
            raise APIError(400, f"The model '{request.model}' does not support 'dimensions': its embeddings have "
                                f"{', '.join(map(str, sorted(sizes)))} dimensions.", param="dimensions",
                           code="unsupported_value")
        if request.encoding_format == "base64":
            for item in answer["data"]:
                item["embedding"] = encode_base64(item["embedding"])
        return answer

    # -- requests ----------------------------------------------------------------------------

    def upstream_body(self, request: Union[ChatRequest, CompletionRequest]) -> dict:
        """The body sent upstream: the client's, ``model`` replaced, config defaults in the gaps."""
        body = dict(request.raw)
        body["model"] = self.upstream_model(request.model)
        if self.config.temperature is not None and body.get("temperature") is None:
            body["temperature"] = self.config.temperature
        if self.config.max_tokens is not None and body.get("max_tokens") is None \
                and body.get("max_completion_tokens") is None:
            body["max_tokens"] = self.config.max_tokens
        return body

    async def _completion(self, path: str, request: Union[ChatRequest, CompletionRequest], kind: str) -> dict:
        body = self.upstream_body(request)
        answer, lossy = await self._answer(path, body)
        return normalise.completion(answer, kind, body["model"], lossy)

    async def _stream(self, path: str, request: Union[ChatRequest, CompletionRequest], kind: str,
                      cancel: Cancellation) -> RemoteStream:
        body = self.upstream_body(request)
        response = await self._request("POST", self.base_url + path, orjson.dumps(body), True)
        self._check_event_stream(response)
        return RemoteStream(response, cancel, self, ChunkNormaliser(kind, body["model"],
                                                                              request.include_usage))

    async def _answer(self, path: str, body: dict) -> tuple[dict, bool]:
        """POST ``body`` to ``path``; the JSON object answered (a 502 for an error in a 200)."""
        response = await self._request("POST", self.base_url + path, orjson.dumps(body), False)
        raw, answer, lossy = await self._read_object(response)
        if answer.get("error") and "choices" not in answer and "data" not in answer:
            message = normalise.parse_error_body(raw)[0] or "no message"
            self.metrics.upstream_error("error_event")
            raise self.bad_gateway(f"The upstream reported an error: {message}")
        return answer, lossy

    async def fetch(self, method: str, path: str) -> bytes:
        """The body of the upstream's 2xx answer to ``method path`` (no request body)."""
        response = await self._request(method, self.base_url + path, b"", False)
        try:
            return await response.read()
        except HTTPClientError as exc:
            raise self.transport_error(exc) from None
        finally:
            response.close()

    async def _read_object(self, response: ClientResponse) -> tuple[bytes, dict, bool]:
        """The body of ``response`` and the JSON object it holds (a 502 if it holds none)."""
        try:
            body = await response.read()
        except HTTPClientError as exc:
            raise self.transport_error(exc) from None
        finally:
            response.close()
        try:
            obj, lossy = normalise.decode_json(body)
        except ValueError:
            obj, lossy = None, False
        if not isinstance(obj, dict):
            self.metrics.upstream_error("protocol")
            raise self.bad_gateway("The upstream answered with a body that is not a JSON object.")
        return body, obj, lossy

    # -- other routes passed through -----------------------------------------------------------

    async def forward(self, method: str, path: str, body: Optional[dict], cancel: Cancellation):
        """Pass a request of another route (``path`` under ``base_url``, e.g. ``/responses``)
        straight through: ``body`` goes up with ``model`` replaced and config defaults left out.
        The answer is the upstream's JSON object, or for ``"stream": true`` an
        :class:`EventRelay`; upstream errors are mapped as on the chat route."""
        stream = bool(body and body.get("stream") is True)
        data = b""
        if body is not None:
            data = orjson.dumps({**body, "model": self.upstream_model(str(body.get("model")))})
        response = await cancel.guard(self._request(method, self.base_url + path, data, stream))
        if stream:
            self._check_event_stream(response)
            return EventRelay(response, cancel, self)
        return (await cancel.guard(self._read_object(response)))[1]

    def _check_event_stream(self, response: ClientResponse) -> None:
        content_type = (response.header("content-type") or "text/event-stream").lower()
        if not content_type.startswith("text/event-stream"):
            response.close()
            raise self.bad_gateway(f"The upstream answered a streamed request with {content_type!r}, "
                                   "not an event stream.")

    async def _request(self, method: str, url: str, body: bytes, stream: bool) -> ClientResponse:
        """Send one request upstream; the response once its head has arrived with a 2xx status."""
        headers = self._headers[stream]
        try:
            response = await self.client.request(method, url, headers, body)
        except HTTPClientError as exc:
            raise self.transport_error(exc) from None
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
        message, type_, param, code = normalise.parse_error_body(body)
        status = response.status
        self.metrics.upstream_error("status_4xx" if status < 500 else "status_5xx")
        if 400 <= status < 500 or status == 501:  # 501: the upstream does not do what was asked
            headers = [("retry-after", response.header("retry-after"))] if response.header("retry-after") else []
            return APIError(400 if status == 501 else status,
                            message or f"The upstream refused the request ({status} {response.reason}).",
                            type=type_ or "invalid_request_error", param=param, code=code, headers=headers)
        log.warning("upstream %s answered %d: %s", self.base_url, status,
                    message or body[:200].decode("utf-8", "replace"))
        detail = f": {message}" if message else "."
        return self.bad_gateway(f"The upstream server failed with status {status}{detail}")

    def transport_error(self, exc: HTTPClientError) -> APIError:
        log.warning("upstream %s: %s", self.base_url, exc)
        self.metrics.upstream_error("connect_timeout" if isinstance(exc, ConnectTimeout) else "read_timeout"
                                    if isinstance(exc, ReadTimeout) else "connect")
        if isinstance(exc, ConnectTimeout):
            return APIError(504, f"Could not connect to the upstream server within "
                                 f"{self.config.connect_timeout:g} seconds.",
                            type="server_error", code="upstream_timeout")
        if isinstance(exc, ReadTimeout):
            return APIError(504, f"The upstream server sent nothing for {self.config.read_timeout:g} seconds.",
                            type="server_error", code="upstream_timeout")
        return self.bad_gateway(f"The upstream server is unreachable or broke the connection ({_plain(exc)}).")

    @staticmethod
    def bad_gateway(message: str) -> APIError:
        return APIError(502, message, type="server_error", code="bad_gateway")


def _plain(exc: HTTPClientError) -> str:
    """Why an HTTP client error happened, without the upstream's address, as a clause."""
    reason = exc.reason.rstrip(".")
    return reason[:1].lower() + reason[1:]


def _where(config: RemoteConfig) -> str:
    """Where ``config`` was written, for messages: ``[remote]``, ``[llm]`` or a ``[[models]]`` entry."""
    return config.section if config.section.startswith("[") else f"[{config.section}]"


def _base_url(config: RemoteConfig) -> str:
    """``base_url`` without a trailing slash; BackendError if it is not an http(s) URL."""
    base_url = config.base_url
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BackendError(f"{_where(config)} base_url {base_url!r} must be an http:// or https:// URL with a host.")
    try:
        parts.port
    except ValueError:
        raise BackendError(f"{_where(config)} base_url {base_url!r} has a bad port.") from None
    return base_url.rstrip("/")
