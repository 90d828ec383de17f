"""Named limits of the HTTP server, with their defaults.

Defaults follow what uvicorn, hypercorn, aiohttp and nginx ship: small enough that one bad client
costs little, large enough that no real OpenAI client meets them.
"""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass
class Limits:
    #: Bytes of a request head (request line + headers); more is answered 431.
    max_head_bytes: int = 16 * 1024
    #: Header fields in one request; more is answered 431.
    max_header_count: int = 100
    #: Bytes of the request target (path + query); more is answered 414.
    max_target_bytes: int = 8 * 1024
    #: Bytes of a request body; more is answered 413 (decided from Content-Length up front).
    max_body_bytes: int = 16 * 1024 * 1024
    #: Seconds from a head's first byte until it must be complete (slowloris); then 408 and close.
    head_timeout: float = 10.0
    #: Seconds a request body may sit without a new byte; then 408 and close.
    body_idle_timeout: float = 30.0
    #: Seconds from the end of a head until its whole body must have arrived, however steadily
    #: it trickles in; then 408 and close.
    body_timeout: float = 120.0
    #: Seconds an idle keep-alive connection is kept open.
    keepalive_timeout: float = 5.0
    #: Requests served on one connection before it is closed.
    max_requests_per_connection: int = 1000
    #: Connections open at once. A new one past it takes the place of an idle keep-alive
    #: connection, else of the one whose request is arriving slowest (answered 408); only when
    #: every connection is answering a request is the new one refused with 503.
    max_connections: int = 1024
    #: Bytes of unsent output buffered per connection before the writer is paused.
    write_buffer_high: int = 256 * 1024
    #: Bytes at which a paused writer resumes.
    write_buffer_low: int = 64 * 1024
    #: Bytes of unsent output at which a connection is dropped: reached only by a streaming
    #: producer that writes on without awaiting ``drain()`` while its client reads slowly.
    max_unsent_bytes: int = 16 * 1024 * 1024
    #: Seconds a handler waits for a paused (slow-reading) client to drain before giving up.
    write_timeout: float = 60.0

    @classmethod
    def from_mapping(cls, values: dict) -> "Limits":
        """Build from a config table, rejecting unknown keys and non-positive numbers."""
        known = {f.name: f for f in fields(cls)}
        kwargs = {}
        for key, value in values.items():
            if key not in known:
                raise ValueError(f"unknown limit {key!r} (known: {', '.join(sorted(known))})")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"limit {key!r} must be a positive number, not {value!r}")
            kwargs[key] = type(getattr(cls, key))(value)
        limits = cls(**kwargs)
        if limits.write_buffer_low > limits.write_buffer_high:
            raise ValueError("limit 'write_buffer_low' must not exceed 'write_buffer_high'")
        return limits
