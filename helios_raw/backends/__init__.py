"""Backends: what answers chat completions (a local llama.cpp model, a remote upstream)."""

from __future__ import annotations

from typing import Optional

from ..config import Config
from .base import Backend, BackendError, ChunkStream


def backend_from_config(config: Config, kind: Optional[str] = None) -> Optional[Backend]:
    """The backend ``config`` names: ``[local]``, else ``[remote]``; None when it names neither.

    ``kind`` ("local" or "remote") forces the choice, with that section's defaults when the config
    lacks it (the local default is the default model). Imports lazily, so the package imports
    without llama.cpp when the remote backend is used. The command line and embedding programs
    both call this, so a configuration serves the same backend either way.
    """
    if kind is None and not config.names_backend:
        return None
    kind = kind or config.backend_kind
    if kind == "remote":
        from ..config import RemoteConfig
        from .remote import RemoteBackend

        return RemoteBackend(config.remote or RemoteConfig())
    from ..config import LocalConfig
    from .local import LocalBackend

    return LocalBackend(config.local or LocalConfig())


__all__ = ["Backend", "BackendError", "ChunkStream", "backend_from_config"]
