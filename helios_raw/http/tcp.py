"""Socket options both ends of our HTTP connections share."""

from __future__ import annotations

import asyncio
import socket


def disable_nagle(transport: asyncio.BaseTransport) -> None:
    """Send small writes (an SSE frame, a short response) at once instead of waiting to batch."""
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:  # pragma: no cover - platform dependent
            pass
