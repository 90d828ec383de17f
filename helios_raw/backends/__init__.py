"""Backends: what answers chat completions (a local llama.cpp model, a remote upstream)."""

from __future__ import annotations

from typing import Optional

from ..config import Config
from .base import Backend, BackendError, ChunkStream


def backend_from_config(config: Config, kind: Optional[str] = None) -> Optional[Backend]:
    """The models ``config`` names, as one backend that routes by ``model`` (a
    :class:`~helios_raw.models.ModelRouter`): its ``[[models]]``, else ``[local]``, else
    ``[remote]``; None when it names none.

    ``kind`` ("local" or "remote") forces that section, with its defaults when the config lacks it
    (the local default is the default model). Imports lazily, so the package imports without
    llama.cpp when the remote backend is used. The command line and embedding programs both call
    this, so a configuration serves the same models either way.
    """
    if kind is None and not config.names_backend:
        return None
    from ..models import router_from_config

    return router_from_config(config, kind)


__all__ = ["Backend", "BackendError", "ChunkStream", "backend_from_config"]
