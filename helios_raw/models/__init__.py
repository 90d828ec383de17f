"""The models a server serves: ``[[models]]`` (or a ``[local]`` / ``[remote]`` section, served as
a one-model list) turned into a :class:`~.router.ModelRouter` that routes requests by ``model``."""

from __future__ import annotations

import importlib.util
from typing import Optional

from ..backends.base import Backend, BackendError
from ..config import Config, LocalConfig, ModelConfig, RemoteConfig
from .entry import Entry
from .router import ModelRouter


def router_from_config(config: Config, kind: Optional[str] = None) -> ModelRouter:
    """The router serving ``config``'s models: its ``[[models]]`` list, or else the ``[local]``
    section (loaded at start-up, as a single model always was) or the ``[remote]`` one. ``kind``
    ("local" or "remote") forces that section, with its defaults when the config lacks it;
    "models" (or None) takes the config's own choice."""
    kind = None if kind == "models" else kind
    if config.models and kind is None:
        entries = [entry_of(entry) for entry in config.models]
    elif (kind or config.backend_kind) == "remote":
        entries = [remote_entry(config.remote or RemoteConfig())]
    else:
        entries = [local_entry(config.local or LocalConfig(), preload=True)]
    server = config.server
    return ModelRouter(entries, server.max_loaded_models, server.load_wait_timeout, config.strict_model_names)


def router_of(backend: Backend) -> ModelRouter:
    """``backend`` as a one-model router (a router is served as it is)."""
    if isinstance(backend, ModelRouter):
        return backend
    return ModelRouter([Entry(backend.model_id, lambda: backend)])


def entry_of(entry: ModelConfig) -> Entry:
    if entry.remote is not None:
        return remote_entry(entry.remote, entry.id, tuple(entry.aliases))
    return local_entry(entry.local, entry.id, tuple(entry.aliases), entry.ttl, entry.preload)


def remote_entry(remote: RemoteConfig, model_id: Optional[str] = None, aliases: tuple = ()) -> Entry:
    """An upstream: always on; without ``model_id`` it serves the upstream's own models."""
    from ..backends.remote import RemoteBackend

    backend = RemoteBackend(remote, model_id=model_id)
    return Entry(backend.model_id, lambda: backend, aliases=aliases)


def local_entry(local: LocalConfig, model_id: Optional[str] = None, aliases: tuple = (), ttl: Optional[float] = None,
               preload: bool = False) -> Entry:
    """A GGUF model, loaded on demand (or at start-up with ``preload``) by a fresh
    :class:`~helios_raw.backends.local.LocalBackend` each time."""
    from ..backends.local import LocalBackend
    from ..backends.local.model import LLAMA_CPP_MISSING
    from ..backends.local.model_files import expected_model_stem, resolve_model_path

    def check() -> str:
        if importlib.util.find_spec("llama_cpp") is None:
            raise BackendError(LLAMA_CPP_MISSING)
        path = resolve_model_path(local)
        return model_id or local.model_name or path.stem

    return Entry(model_id or local.model_name or expected_model_stem(local), lambda: LocalBackend(local),
                aliases=aliases, loadable=True, ttl=ttl, preload=preload, context_size=local.context_size,
                check=check)


__all__ = ["ModelRouter", "Entry", "router_from_config", "router_of"]
