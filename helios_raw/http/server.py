"""Listening, the set of open connections, and graceful shutdown."""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Optional

from .limits import Limits
from .protocol import HTTPProtocol

log = logging.getLogger("helios_raw.server")


class ConnectionRegistry:
    """The open connections of one server, capped at ``limits.max_connections``.

    At the cap a newcomer is let in by closing another connection: the oldest quiet one (idle
    between requests, or lingering after an error) first, else the one receiving its request
    (head or body) at the lowest rate in bytes per second since its first byte, which is answered
    408. Connections answering a request are never closed for a newcomer: when all are, it is
    refused with 503. So clients that trickle heads or bodies cannot hold every connection: each
    new connection displaces the slowest of them, and a real request is served.
    """

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.connections: dict[HTTPProtocol, None] = {}  # insertion-ordered: oldest first
        self.shutting_down = False
        self._empty = asyncio.Event()
        self._empty.set()

    def admit(self, protocol: HTTPProtocol) -> bool:
        """Register a new connection, making room at the cap (see the class's docstring). False
        if every open connection is answering a request."""
        if len(self.connections) >= self.limits.max_connections:
            victim = self._victim(protocol.loop.time())
            if victim is None:
                return False
            self.discard(victim)
            victim.evict()
        self.connections[protocol] = None
        self._empty.clear()
        return True

    def _victim(self, now: float) -> Optional[HTTPProtocol]:
        slowest, slowest_rate = None, float("inf")
        for connection in self.connections:  # oldest first
            if connection.idle:
                return connection
            rate = connection.receive_rate(now)
            if rate is not None and rate < slowest_rate:
                slowest, slowest_rate = connection, rate
        return slowest

    def discard(self, protocol: HTTPProtocol) -> None:
        self.connections.pop(protocol, None)
        if not self.connections:
            self._empty.set()

    async def wait_empty(self) -> None:
        await self._empty.wait()


class HTTPServer:
    """Serves ``app`` over HTTP/1.1 on one listening socket.

    ``await start()`` binds and returns the bound ``(host, port)``; ``await stop(timeout)`` stops
    accepting, closes idle connections, lets requests in flight finish for up to ``timeout``
    seconds, then ends what is left (streams with their terminating frame) and closes.
    """

    def __init__(self, app, host: str = "127.0.0.1", port: int = 8000, limits: Optional[Limits] = None,
                 backlog: int = 2048) -> None:
        self.app = app
        self.host = host
        self.port = port
        self.limits = limits or Limits()
        self.backlog = backlog
        self.registry: Optional[ConnectionRegistry] = None
        self._server: Optional[asyncio.base_events.Server] = None

    async def start(self) -> tuple[str, int]:
        loop = asyncio.get_running_loop()
        self.registry = ConnectionRegistry(self.limits)
        registry = self.registry
        self._server = await loop.create_server(
            lambda: HTTPProtocol(self.app, self.limits, registry, loop),
            self.host,
            self.port,
            reuse_address=True,
            backlog=self.backlog,
            family=socket.AF_INET6 if ":" in self.host else socket.AF_UNSPEC,
        )
        bound = self._server.sockets[0].getsockname()
        self.host, self.port = bound[0], bound[1]
        return self.host, self.port

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    async def stop(self, timeout: float = 10.0) -> None:
        if self._server is None:
            return
        registry = self.registry
        registry.shutting_down = True
        self._server.close()
        for connection in list(registry.connections):
            connection.shutdown()
        try:
            if registry.connections:
                await asyncio.wait_for(registry.wait_empty(), timeout)
        except asyncio.TimeoutError:
            busy = list(registry.connections)
            log.warning("shutdown deadline of %gs passed; ending %d response(s) in flight", timeout, len(busy))
            for connection in busy:
                connection.abort_for_shutdown()
            try:
                await asyncio.wait_for(registry.wait_empty(), 2.0)
            except asyncio.TimeoutError:
                for connection in list(registry.connections):
                    connection.transport.abort()
        await self._server.wait_closed()
        self._server = None
