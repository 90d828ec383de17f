"""An asyncio HTTP/1.1 client on ``h11``, the parser the server uses.

One job: send a request to an ``http://`` or ``https://`` URL and hand back the response as it
arrives. What it does:

- keeps connections alive and pools them per ``(scheme, host, port)``, at most
  ``max_connections`` open per origin (more requests wait for one, within the connect timeout);
- speaks TLS through the standard :mod:`ssl` module (the default context verifies certificates and
  honours ``SSL_CERT_FILE`` / ``SSL_CERT_DIR``; pass ``ssl_context`` to trust another CA);
- sends request bodies with ``Content-Length``; reads response bodies framed by
  ``Content-Length``, chunked encoding or the end of the connection, piece by piece as they arrive;
- applies a connect timeout (pool wait + TCP connect + TLS handshake) and a read timeout (the
  longest silence allowed while waiting for the response head or the next piece of body);
- returns a connection to the pool only once its response was read to the end and both sides
  agreed to keep it open; a response closed early closes its connection at once.

A request sent on a pooled connection that the server had already closed (no byte of a response
came back) is sent again once on a fresh connection: that is the keep-alive race every pooling
client meets, and the server cannot have acted on a request it never answered.

Usage::

    client = HTTPClient(max_connections=8, connect_timeout=5, read_timeout=60)
    response = await client.request("POST", "https://host/v1/x", [("content-type", "application/json")], body)
    async with response:
        async for piece in response.iter_bytes():
            ...
    await client.aclose()
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
from typing import AsyncIterator, Iterable, Optional
from urllib.parse import urlsplit

import h11

from .connection import (
    ClientConnection,
    ConnectError,
    ConnectTimeout,
    HTTPClientError,
    Origin,
    ReadTimeout,
    RemoteProtocolError,
    StaleConnection,
    Wire,
)

#: The client, its response, and the errors a caller catches (defined with the connection).
__all__ = ["ClientResponse", "ConnectError", "ConnectTimeout", "HTTPClient", "HTTPClientError", "ReadTimeout",
           "RemoteProtocolError"]


class ClientResponse:
    """A response whose head has arrived; the body is read with :meth:`iter_bytes` or :meth:`read`.

    ``headers`` are h11's ``(name, value)`` byte pairs with lower-case names. Close the response
    (:meth:`close`, or ``async with``) when done: its connection goes back to the pool if the body
    was read to the end, and is closed otherwise.
    """

    def __init__(self, client: "HTTPClient", connection: ClientConnection, head: h11.Response, read_timeout: float) -> None:
        self._client = client
        self._connection: Optional[ClientConnection] = connection
        self.status: int = head.status_code
        self.reason: str = head.reason.decode("latin-1")
        self.http_version: str = head.http_version.decode("latin-1")
        self.headers: list = list(head.headers)
        self.read_timeout = read_timeout
        self.complete = False

    def header(self, name: str, default: Optional[str] = None) -> Optional[str]:
        """The value of header ``name`` (case-insensitive); repeated headers joined by ``, ``."""
        key = name.lower().encode("latin-1")
        values = [v.decode("latin-1") for k, v in self.headers if k == key]
        return ", ".join(values) if values else default

    @property
    def framed(self) -> bool:
        """The body's end is marked (Content-Length or chunked), so a body cut short is told
        apart from a whole one; a body delimited by the connection closing is not."""
        return any(k == b"content-length" or (k == b"transfer-encoding" and b"chunked" in v.lower())
                   for k, v in self.headers)

    async def iter_bytes(self) -> AsyncIterator[bytes]:
        """The body, piece by piece as it arrives. Raises :class:`ReadTimeout` or
        :class:`RemoteProtocolError` if it stalls or breaks off."""
        connection = self._connection
        if connection is None:
            if self.complete:
                return
            raise HTTPClientError("The response was closed before its body was read.")
        try:
            while True:
                event = await connection.next_event(self.read_timeout)
                kind = type(event)
                if kind is h11.Data:
                    if event.data:
                        yield bytes(event.data)
                elif kind is h11.EndOfMessage:
                    self.complete = True
                    self.close()
                    return
                elif kind is h11.ConnectionClosed:  # pragma: no cover - h11 ends the body first
                    raise RemoteProtocolError("The server closed the connection before the response was complete.")
        except BaseException:
            self.close()
            raise

    async def read(self, limit: Optional[int] = None) -> bytes:
        """The whole body; with ``limit``, at most that many bytes (the rest is not read)."""
        pieces = []
        size = 0
        async for piece in self.iter_bytes():
            pieces.append(piece)
            size += len(piece)
            if limit is not None and size >= limit:
                self.close()
                break
        body = b"".join(pieces)
        return body if limit is None else body[:limit]

    def close(self) -> None:
        """Give the connection back to the pool if the response is complete and the connection
        reusable; otherwise close it now. Idempotent."""
        connection, self._connection = self._connection, None
        if connection is not None:
            self._client._release(connection, reuse=self.complete)

    async def __aenter__(self) -> "ClientResponse":
        return self

    async def __aexit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        # A response dropped unread must not keep its connection (and the server's work) alive.
        if self._connection is not None:
            self.close()


class HTTPClient:
    """Sends HTTP/1.1 requests over pooled keep-alive connections (see the module docstring).

    Use it from one event loop. ``connections_opened`` counts every connection made, for
    diagnostics.
    """

    def __init__(
        self,
        *,
        max_connections: int = 32,
        connect_timeout: float = 10.0,
        read_timeout: float = 120.0,
        ssl_context: Optional[ssl.SSLContext] = None,
        user_agent: str = "helios_raw",
    ) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self.max_connections = max_connections
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.user_agent = user_agent
        self._ssl_context = ssl_context
        self._origins: dict[tuple, Origin] = {}
        self.connections_opened = 0
        self._closed = False

    async def request(
        self,
        method: str,
        url: str,
        headers: Iterable[tuple[str, str]] = (),
        body: bytes = b"",
        *,
        read_timeout: Optional[float] = None,
    ) -> ClientResponse:
        """Send one request and return once the response head has arrived (1xx heads are
        skipped). ``Host``, ``User-Agent`` and ``Content-Length`` are added unless given."""
        if self._closed:
            raise HTTPClientError("The HTTP client is closed.")
        origin, target = self._origin_of(url)
        head = _request_head(method, target, origin, headers, body, self.user_agent)
        timeout = self.read_timeout if read_timeout is None else read_timeout
        for attempt in range(2):
            connection = await self._acquire(origin)
            try:
                return await self._exchange(connection, head, body, timeout)
            except StaleConnection:
                self._release(connection, reuse=False)
                if connection.requests > 1 and attempt == 0:
                    # The server had closed the pooled connection; the others idle as long are
                    # likely closed too. Retry on a fresh one.
                    origin.drop_idle()
                    continue
                raise RemoteProtocolError("The server closed the connection without answering.") from None
            except BaseException:
                self._release(connection, reuse=False)
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def aclose(self, timeout: float = 1.0) -> None:
        """Close every idle connection (waiting up to ``timeout`` seconds for them to finish
        closing); responses still open close their own connections when closed."""
        self._closed = True
        idle = [connection for origin in self._origins.values() for connection in origin.idle]
        for origin in self._origins.values():
            origin.idle.clear()
        if idle:
            await asyncio.gather(*(connection.wire.close_gracefully(timeout) for connection in idle))

    # -- internals ---------------------------------------------------------------------------

    def _origin_of(self, url: str) -> tuple[Origin, str]:
        key = _origin_key(url)
        origin = self._origins.get(key)
        if origin is None:
            origin = self._origins[key] = Origin(*key, self.max_connections)
        parts = urlsplit(url)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return origin, target

    async def _acquire(self, origin: Origin) -> ClientConnection:
        """A connection to ``origin`` holding one of its slots: an idle one, else a new one."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.connect_timeout
        if origin.slots.locked():
            try:
                await asyncio.wait_for(origin.slots.acquire(), self.connect_timeout)
            except asyncio.TimeoutError:
                raise ConnectTimeout(
                    f"All {self.max_connections} connections to {origin.host_header} stayed busy for "
                    f"{self.connect_timeout:g} seconds.") from None
        else:
            await origin.slots.acquire()
        try:
            connection = origin.take_idle()
            if connection is None:
                connection = await self._connect(origin, max(0.001, deadline - loop.time()))
            connection.requests += 1
            return connection
        except BaseException:
            origin.slots.release()
            raise

    async def _connect(self, origin: Origin, timeout: float) -> ClientConnection:
        loop = asyncio.get_running_loop()
        context = None
        if origin.scheme == "https":
            context = self._ssl_context or _default_ssl_context()
        where = origin.host_header
        try:
            _, wire = await asyncio.wait_for(
                loop.create_connection(
                    lambda: Wire(loop), origin.host, origin.port, ssl=context,
                    server_hostname=origin.host if context else None,
                ),
                timeout,
            )
        except asyncio.TimeoutError:
            raise ConnectTimeout(f"Connecting to {where} took longer than {self.connect_timeout:g} seconds.") from None
        except ssl.SSLCertVerificationError as exc:
            reason = f"its TLS certificate failed verification: {exc.verify_message}"
            raise ConnectError(f"The TLS certificate of {where} failed verification: {exc.verify_message}.",
                               reason) from None
        except ssl.SSLError as exc:
            reason = f"the TLS handshake failed: {exc.reason or exc}"
            raise ConnectError(f"The TLS handshake with {where} failed: {exc.reason or exc}.", reason) from None
        except socket.gaierror as exc:
            reason = f"the host name could not be resolved: {exc.strerror or exc}"
            raise ConnectError(f"The host {origin.host} could not be resolved: {exc.strerror or exc}.", reason) from None
        except OSError as exc:
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            raise ConnectError(f"Could not connect to {where}: {reason}.", reason) from None
        self.connections_opened += 1
        return ClientConnection(origin, wire)

    async def _exchange(self, connection: ClientConnection, head: h11.Request, body: bytes, timeout: float) -> ClientResponse:
        """Send the request; read up to the final response head."""
        data = connection.h11.send(head)
        if body:
            data += connection.h11.send(h11.Data(data=body))
        data += connection.h11.send(h11.EndOfMessage())
        connection.received = 0
        await connection.wire.write(data, timeout)
        while True:
            try:
                event = await connection.next_event(timeout)
            except RemoteProtocolError:
                if connection.received == 0:
                    raise StaleConnection("closed before answering") from None
                raise
            if isinstance(event, h11.Response):
                return ClientResponse(self, connection, event, timeout)
            if isinstance(event, h11.ConnectionClosed):
                raise StaleConnection("closed before answering")
            # an InformationalResponse (1xx): the final response follows

    def _release(self, connection: ClientConnection, reuse: bool) -> None:
        origin = connection.origin
        origin.slots.release()
        if reuse and not self._closed and connection.reusable:
            connection.h11.start_next_cycle()
            origin.idle.append(connection)
        else:
            connection.wire.close()


def _origin_key(url: str) -> tuple[str, str, int]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise HTTPClientError(f"Unsupported URL scheme in {url!r}: use http:// or https://.")
    if not parts.hostname:
        raise HTTPClientError(f"The URL {url!r} has no host.")
    try:
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError:
        raise HTTPClientError(f"The URL {url!r} has a bad port.") from None
    return scheme, parts.hostname, port


def _request_head(method: str, target: str, origin: Origin, headers: Iterable[tuple[str, str]], body: bytes,
                  user_agent: str) -> h11.Request:
    given = [(name.lower(), value) for name, value in headers]
    names = {name for name, _ in given}
    extra = []
    if "host" not in names:
        extra.append(("host", origin.host_header))
    if "user-agent" not in names:
        extra.append(("user-agent", user_agent))
    if body or method.upper() in ("POST", "PUT", "PATCH"):
        given = [(n, v) for n, v in given if n not in ("content-length", "transfer-encoding")]
        extra.append(("content-length", str(len(body))))
    return h11.Request(method=method.upper(), target=target, headers=extra + given)


_DEFAULT_CONTEXT: Optional[ssl.SSLContext] = None


def _default_ssl_context() -> ssl.SSLContext:
    """The system's trust store with certificate and host name checks (made once)."""
    global _DEFAULT_CONTEXT
    if _DEFAULT_CONTEXT is None:
        _DEFAULT_CONTEXT = ssl.create_default_context()
    return _DEFAULT_CONTEXT
