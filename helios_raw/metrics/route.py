"""``GET /metrics``, and the access hook that counts every HTTP request by route and status."""

from __future__ import annotations

from typing import Callable, Optional

from ..errors import APIError
from ..http.request import Request
from ..http.response import Response
from ..http.router import Router
from .exposition import CONTENT_TYPE, render
from .peers import Peers
from .recording import Metrics


class MetricsRoute:
    """Answers a scrape with ``metrics`` (model-level families only with ``model_level``); a
    worker process sets ``peers`` so that the answer covers every worker."""

    def __init__(self, metrics: Metrics, model_level: bool) -> None:
        self.metrics = metrics
        self.model_level = model_level
        self.peers: Optional[Peers] = None

    def snapshot(self) -> list:
        return self.metrics.snapshot(self.model_level)

    async def __call__(self, request: Request) -> Response:
        parts = [(None, self.snapshot())] if self.peers is None else await self.peers.gather()
        return Response(render(parts), 200, content_type=CONTENT_TYPE)


def access_recorder(metrics: Metrics, router: Router) -> Callable[[Request, int, float], None]:
    """``record(request, status, seconds)`` for :attr:`App.on_access`: the route is the matched
    template (a CORS preflight's is that of the method it asks about), ``unmatched`` for a 404
    or 405."""
    match = router.match
    record = metrics.http_request

    def record_access(request: Request, status: int, seconds: float) -> None:
        route = request.route
        if route is None:  # answered before routing: a preflight, a refused key, a 404 or 405
            method = request.method
            if method == "OPTIONS":
                method = request.header("access-control-request-method") or method
            try:
                route = match(method, request.segments, request.path)[0].template
            except APIError:
                route = "unmatched"
        record(request.method, route, status, seconds, request.cancelled.is_set())

    return record_access
