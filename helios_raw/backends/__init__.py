"""Backends: what answers chat completions (a local llama.cpp model, a remote upstream)."""

from __future__ import annotations

from typing import Optional

from ..config import Config
from .base import Backend, BackendError, ChunkStream


def create_backend(config: Config, kind: Optional[str] = None) -> Backend:
    """The backend ``config`` asks for (``kind`` "local" or "remote" overrides the choice).

    Imports lazily, so the package imports without llama.cpp when the remote backend is used.
    """
    kind = kind or config.backend_kind
    if kind == "remote":
        from ..config import RemoteConfig
        from .remote import RemoteBackend

        return RemoteBackend(config.llm or RemoteConfig())
    from ..config import LocalConfig
    from .local import LocalBackend

    return LocalBackend(config.local or LocalConfig())


__all__ = ["Backend", "BackendError", "ChunkStream", "create_backend"]
