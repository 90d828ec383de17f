"""The server a user runs or embeds: HTTP listener + routes + backend + custom endpoints.

Embedding::

    server = ServerBuilder().address("127.0.0.1:0").endpoint(get("/hi", {"hi": 1})).build()
    host, port = await server.start()     # inside your running event loop
    ...
    await server.stop()

or ``server.serve()`` / ``serve(...)`` to block until SIGINT/SIGTERM.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Callable, Iterable, Optional

from .anthropic import MessagesRoutes
from .app import App
from .backends import Backend, backend_from_config
from .config import Config
from .endpoints import CustomEndpoint, endpoints_from_list
from .http.limits import Limits
from .http.server import HTTPServer
from .logs import setup_logging
from .metrics import Metrics
from .metrics.route import MetricsRoute, access_recorder
from .models import ModelRouter, router_of
from .openai.handlers import OpenAIRoutes, health_route
from .responses import ResponsesRoutes, ResponseStore

log = logging.getLogger("helios_raw")


def parse_address(address: str) -> tuple[str, int]:
    """``host:port``, ``[v6]:port``, ``:port`` or ``host`` -> (host, port); ValueError if bad."""
    host, port = address, "8000"
    if address.startswith("["):
        end = address.find("]")
        if end < 0:
            raise ValueError(f"bad address {address!r}: missing ']'")
        host, rest = address[1:end], address[end + 1:]
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"bad address {address!r}")
            port = rest[1:]
    elif address.count(":") == 1:
        host, port = address.split(":")
    host = host or "127.0.0.1"
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"bad port in address {address!r}: it must be a number from 0 to 65535")
    return host, int(port)


class Server:
    """One configured server.

    ``backend`` None serves the models ``config`` names (``[[models]]``, ``[local]`` or
    ``[remote]``), exactly as ``--config`` would; a config that names none serves only ``/health``
    and custom endpoints. ``strict_models`` None takes the config's ``strict_model_names``.
    ``backend`` is always served through a :class:`~helios_raw.models.ModelRouter` (a backend of
    its own is its one model).
    """

    def __init__(
        self,
        config: Optional[Config] = None,
        backend: Optional[Backend] = None,
        endpoints: Iterable[CustomEndpoint] = (),
        strict_models: Optional[bool] = None,
    ) -> None:
        self.config = config or Config()
        self.strict_models = self.config.strict_model_names if strict_models is None else strict_models
        backend = backend if backend is not None else backend_from_config(self.config)
        self.backend: Optional[ModelRouter] = None
        if backend is not None:
            self.backend = router_of(backend)
            self.backend.strict = self.strict_models
        self.endpoints = list(endpoints_from_list(self.config.endpoints, "the configuration")) + list(endpoints)
        #: What this server counts; its backends record into it too.
        self.metrics = Metrics()
        self.metrics_route = MetricsRoute(self.metrics, model_level=self.backend is not None)
        if self.backend is not None:
            self.backend.use_metrics(self.metrics)
        #: Whether :meth:`start` logs the address and routes (a worker process leaves it to its parent).
        self.announce = True
        self.app = self._build_app()
        server = self.config.server
        self.http = HTTPServer(self.app, server.host, server.port, server.limits)

    def _build_app(self) -> App:
        server = self.config.server
        app = App(api_key=server.api_key, cors_origins=server.cors_origins, access_log_enabled=server.access_log,
                  access_log_format=server.access_log_format)
        app.add_route("GET", "/health", health_route(self.backend), description="health check")
        if self.backend is not None:
            OpenAIRoutes(self.backend, self.strict_models).install(app)
            store = ResponseStore(server.responses_store_size, server.responses_store_ttl)
            # One always-on backend (an upstream, an agent) answers the Responses routes itself, so
            # that an upstream can take them whole (responses_passthrough).
            sole = self.backend.entries[0]
            responses = sole.backend if len(self.backend.entries) == 1 and not sole.loadable else self.backend
            ResponsesRoutes(responses, store, self.strict_models).install(app)
            MessagesRoutes(self.backend, self.strict_models).install(app)
        for endpoint in self.endpoints:
            endpoint.install(app)
        if server.metrics:
            app.add_route("GET", "/metrics", self.metrics_route, description="Prometheus metrics")
            app.on_access = access_recorder(self.metrics, app.router)
        return app

    @property
    def address(self) -> tuple[str, int]:
        return self.http.address

    async def start(self) -> tuple[str, int]:
        """Start the backend (a model loads in the background) and listen; the bound address.
        If listening fails (say, the port is taken) the backend is closed again."""
        if self.backend is not None:
            await self.backend.start()
            self.metrics.model_name = self.backend.model_id
        try:
            host, port = await self.http.start()
        except BaseException:
            if self.backend is not None:
                await self.backend.close()
            raise
        if self.announce:
            self.log_start(host, port)
        return host, port

    def log_start(self, host: str, port: int, note: str = "") -> None:
        """Log the address listened on (and ``note``), then every route."""
        log.info("listening on http://%s:%d%s", host if ":" not in host else f"[{host}]", port, note)
        for route in sorted(self.app.routes, key=lambda r: (r.template, r.method)):
            log.info("route %-6s %s%s", route.method, route.template,
                     f"  ({route.description})" if route.description else "")

    async def stop(self, timeout: Optional[float] = None) -> None:
        """Stop gracefully: requests in flight get up to ``timeout`` seconds (the config's
        ``shutdown_timeout`` by default)."""
        await self.http.stop(self.config.server.shutdown_timeout if timeout is None else timeout)
        if self.backend is not None:
            await self.backend.close()

    async def run_until_signal(self, on_ready: Optional[Callable[[], None]] = None) -> None:
        """Serve until SIGINT or SIGTERM, then stop gracefully. A second signal during the
        graceful stop is left to Python's default handling: Ctrl-C twice stops at once.
        ``on_ready()`` is called once the backend serves."""
        loop = asyncio.get_running_loop()
        stopping = asyncio.Event()
        signals = (signal.SIGINT, signal.SIGTERM)
        for sig in signals:
            loop.add_signal_handler(sig, stopping.set)
        try:
            await self.start()
            signalled = asyncio.ensure_future(stopping.wait())
            if self.backend is not None:
                ready = asyncio.ensure_future(self.backend.wait_ready())
                await asyncio.wait([ready, signalled], return_when=asyncio.FIRST_COMPLETED)
                if ready.done() and ready.exception() is not None:
                    signalled.cancel()
                    await self.stop(0)
                    raise ready.exception()
                ready.cancel()
            if on_ready is not None and not signalled.done():
                on_ready()
            await signalled
        finally:
            for sig in signals:
                loop.remove_signal_handler(sig)
        log.info("shutting down")
        await self.stop()

    def serve(self) -> int:
        """Block serving until SIGINT/SIGTERM, in ``[server] workers`` processes; the exit
        status (0 after a graceful stop). A program that has not set up logging gets the command
        line's: the address, the model and one line per request on stderr."""
        if not logging.getLogger().handlers:
            setup_logging(self.config.server.log_level, self.config.server.access_log_format)
        if self.config.server.workers > 1:
            from .workers import Supervisor

            return Supervisor(self).run()
        asyncio.run(self.run_until_signal())
        return 0


class ServerBuilder:
    """Fluent construction of a :class:`Server`, with the original's vocabulary."""

    def __init__(self, config: Optional[Config] = None) -> None:
        self._config = config or Config()
        self._backend: Optional[Backend] = None
        self._endpoints: list[CustomEndpoint] = []
        self._strict: Optional[bool] = None

    @classmethod
    def with_agent(cls, agent, model_name: str, config: Optional[Config] = None) -> "ServerBuilder":
        """A server whose chat completions are answered by ``agent`` under ``model_name``."""
        from .agent import AgentBackend

        builder = cls(config)
        builder._backend = AgentBackend(agent, model_name, builder._config)
        return builder

    def backend(self, backend: Backend, strict_models: Optional[bool] = None) -> "ServerBuilder":
        """Serve ``backend`` instead of the one the config names."""
        self._backend = backend
        self._strict = strict_models
        return self

    def address(self, address: str) -> "ServerBuilder":
        self._config.server.host, self._config.server.port = parse_address(address)
        return self

    def api_key(self, key: Optional[str]) -> "ServerBuilder":
        self._config.server.api_key = key
        return self

    def cors_origins(self, origins: Iterable[str]) -> "ServerBuilder":
        self._config.server.cors_origins = list(origins)
        return self

    def limits(self, limits: Limits) -> "ServerBuilder":
        self._config.server.limits = limits
        return self

    def workers(self, count: int) -> "ServerBuilder":
        """Serve in ``count`` processes sharing the port (see :mod:`helios_raw.workers`)."""
        self._config.server.workers = count
        return self

    def endpoint(self, endpoint: CustomEndpoint) -> "ServerBuilder":
        self._endpoints.append(endpoint)
        return self

    def endpoints(self, endpoints: Iterable[CustomEndpoint]) -> "ServerBuilder":
        self._endpoints.extend(endpoints)
        return self

    def build(self) -> Server:
        return Server(self._config, self._backend, self._endpoints, self._strict)

    def serve(self) -> int:
        return self.build().serve()


def serve(address: str = "127.0.0.1:8000", backend: Optional[Backend] = None,
          endpoints: Iterable[CustomEndpoint] = (), config: Optional[Config] = None) -> None:
    """Block serving ``backend`` and ``endpoints`` on ``address`` until SIGINT/SIGTERM."""
    builder = ServerBuilder(config).address(address).endpoints(endpoints)
    if backend is not None:
        builder.backend(backend)
    builder.serve()
