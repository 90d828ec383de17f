"""A table of (method, path template) -> handler.

Templates are compiled once, when a route is added: ``/v1/models/{id}`` (or ``/v1/models/:id``)
has literal segments and named parameters, each matching exactly one non-empty path segment.
A request is matched by its path's segments, each percent-decoded on its own (see
:func:`~helios_raw.http.request.split_path`). Static paths are found with one dict lookup;
templated ones by comparing segments in order. HEAD is answered by a GET route unless a HEAD
route exists.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from ..errors import APIError

METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")


class RouteConflict(ValueError):
    """Two routes would answer the same method and path."""


@dataclass
class Route:
    """``handler(request)`` returns a response, or an awaitable of one.

    A handler that returns a response (not an awaitable) runs on the event loop: it must be quick.
    """

    method: str
    template: str
    handler: Callable[..., Any]
    description: str = ""
    segments: tuple = field(default=(), repr=False)  # (is_param, text) per segment

    def __post_init__(self) -> None:
        self.segments = compile_template(self.template)

    @property
    def static(self) -> bool:
        return not any(is_param for is_param, _ in self.segments)

    def shape(self) -> tuple:
        """The template with parameter names erased: two routes of one shape collide."""
        return tuple(None if is_param else text for is_param, text in self.segments)


def compile_template(template: str) -> tuple:
    """Split ``/a/{b}/:c`` into segments; reject templates that could never match sanely."""
    if not template.startswith("/"):
        raise ValueError(f"route path {template!r} must start with '/'")
    segments = []
    names = set()
    for part in template.strip("/").split("/") if template != "/" else []:
        if part.startswith("{") and part.endswith("}") and len(part) > 2:
            name = part[1:-1]
        elif part.startswith(":") and len(part) > 1:
            name = part[1:]
        else:
            if not part or any(c in part for c in "{}"):
                raise ValueError(f"route path {template!r} has a malformed segment {part!r}")
            segments.append((False, part))
            continue
        if not name.isidentifier() or name in names:
            raise ValueError(f"route path {template!r} has a bad or repeated parameter {name!r}")
        names.add(name)
        segments.append((True, name))
    return tuple(segments)


class Router:
    """Finds the route for a request, or raises the 404 / 405 APIError a client should see."""

    def __init__(self) -> None:
        self._static: dict[tuple, dict[str, Route]] = {}  # by the texts of the segments
        self._templated: list[Route] = []
        self._shapes: dict[tuple, dict[str, Route]] = {}

    @property
    def routes(self) -> list[Route]:
        return [r for by_method in self._shapes.values() for r in by_method.values()]

    def add(self, route: Route) -> None:
        """Add ``route``; a second route of the same method and shape raises RouteConflict."""
        if route.method not in METHODS:
            raise ValueError(f"unsupported HTTP method {route.method!r} for {route.template}")
        by_method = self._shapes.setdefault(route.shape(), {})
        if route.method in by_method:
            other = by_method[route.method]
            raise RouteConflict(
                f"route {route.method} {route.template} conflicts with {other.method} {other.template}"
            )
        by_method[route.method] = route
        if route.static:
            self._static.setdefault(tuple(t for _, t in route.segments), {})[route.method] = route
        else:
            self._templated.append(route)

    def match(self, method: str, segments: tuple, path: str) -> tuple[Route, dict[str, str]]:
        """The route and path parameters for ``method`` and a path's ``segments``; ``path`` is
        what an error names."""
        static = self._static.get(segments)
        if static is not None:
            route = static.get(method) or (static.get("GET") if method == "HEAD" else None)
            if route is not None:
                return route, {}
        candidates = {m: (r, {}) for m, r in (static or {}).items()}
        for route, params in self._match_templated(segments):
            candidates.setdefault(route.method, (route, params))
        found = candidates.get(method) or (candidates.get("GET") if method == "HEAD" else None)
        if found is not None:
            return found
        if not candidates:
            raise APIError(404, f"Unknown request URL: {method} {path}.", code="unknown_url")
        allowed = sorted(set(candidates) | ({"HEAD"} if "GET" in candidates else set()) | {"OPTIONS"})
        raise APIError(
            405,
            f"Method {method} is not allowed for {path}; allowed: {', '.join(allowed)}.",
            code="method_not_allowed",
            headers=[("allow", ", ".join(allowed))],
        )

    def _match_templated(self, segments: tuple):
        for route in self._templated:
            params = _match_segments(route.segments, segments)
            if params is not None:
                yield route, params


def _match_segments(segments: tuple, parts: tuple) -> Optional[dict[str, str]]:
    if len(segments) != len(parts):
        return None
    params = {}
    for (is_param, text), part in zip(segments, parts):
        if is_param:
            if not part:
                return None
            params[text] = part
        elif text != part:
            return None
    return params
