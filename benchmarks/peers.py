"""The servers under test, run as subprocesses: helios_raw, llama-cpp-python's own server, and
the HTTP ceilings of ``ceilings.py``.

Each :class:`Server` starts on a free loopback port, is polled until it answers, and is stopped
by its process id. Every one started is stopped by :func:`stop_all`, which runs from the runner's
``finally``, at exit, and on SIGINT/SIGTERM/SIGHUP; on Linux the kernel also sends each child
SIGTERM if the runner itself dies, so an interrupted run leaves no server behind.

Both servers get the same model file, thread count, context size and llama.cpp load settings
(:class:`ModelSetup`), so they differ only in the HTTP and scheduling layers on top.
"""

from __future__ import annotations

import atexit
import ctypes
import http.client
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

#: What ``python -m llama_cpp.server`` needs beyond llama_cpp (its ``[server]`` extra).
PEER_MODULES = ("fastapi", "uvicorn", "sse_starlette", "starlette_context", "pydantic_settings")

# Runs a module as ``__main__`` after, when asked, making llama.cpp load models without its extra
# buffer types (weight repacking, AMX). Used for every process alike; see probe_extra_buffers().
_LAUNCHER = """
import runpy, sys
if sys.argv[1] == "--no-extra-bufts":
    del sys.argv[1]
    import llama_cpp.llama_cpp as bindings
    _defaults = bindings.llama_model_default_params
    def _without_extra_buffers():
        params = _defaults()
        params.use_extra_bufts = False
        return params
    bindings.llama_model_default_params = _without_extra_buffers
module = sys.argv[1]
sys.argv = [module] + sys.argv[2:]
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""


@dataclass
class ModelSetup:
    """What both servers (and the in-process ceiling) load, identically."""

    model_path: str
    threads: int
    n_ctx: int = 2048
    #: A llama-cpp-python chat format name; None uses the template in the GGUF.
    chat_format: Optional[str] = None
    #: False loads without llama.cpp's extra buffer types (see probe_extra_buffers).
    extra_buffers: bool = True

    def llama_kwargs(self) -> dict:
        """Keyword arguments for ``llama_cpp.Llama`` matching what the servers load."""
        kwargs = dict(model_path=self.model_path, n_ctx=self.n_ctx, n_threads=self.threads,
                      n_threads_batch=self.threads, verbose=False)
        if self.chat_format:
            kwargs["chat_format"] = self.chat_format
        return kwargs


_running: list = []
_handlers_installed = False


def stop_all() -> None:
    """Stop every server started here and still running, newest first. Safe to call twice."""
    while _running:
        process = _running.pop()
        try:
            process.stop()
        except Exception as exc:  # keep stopping the others
            print(f"benchmarks: could not stop {process!r}: {exc}", file=sys.stderr)


def _on_signal(signum, frame) -> None:
    stop_all()
    raise SystemExit(128 + signum)


def _install_handlers() -> None:
    global _handlers_installed
    if _handlers_installed:
        return
    _handlers_installed = True
    atexit.register(stop_all)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        try:
            signal.signal(sig, _on_signal)
        except ValueError:  # not the main thread: atexit and finally still apply
            pass


def die_with_parent() -> None:
    """In the child before exec: ask Linux for SIGTERM when the runner dies."""
    try:
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerFailed(RuntimeError):
    """A server exited or never became ready; the message ends with its log's tail."""


@dataclass(eq=False)
class Server:
    """One server process. ``ready_path`` is polled until ``is_ready(status, body)`` holds."""

    name: str
    argv: Sequence[str]
    port: int
    ready_path: str
    is_ready: Callable[[int, bytes], bool]
    env: Optional[dict] = None
    process: Optional[subprocess.Popen] = None
    log_path: str = ""
    _log: object = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        return self.process.pid

    def start(self) -> "Server":
        _install_handlers()
        self._log = tempfile.NamedTemporaryFile("w+b", prefix=f"bench-{self.name}-", suffix=".log", delete=False)
        self.log_path = self._log.name
        self.process = subprocess.Popen(
            list(self.argv), stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            env=self.env, start_new_session=True, preexec_fn=die_with_parent,
        )
        _running.append(self)
        return self

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Poll until ready; ServerFailed if the process exits or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerFailed(f"{self.name} exited with status {self.process.returncode}:\n{self.log_tail()}")
            try:
                status, body = get(self.port, self.ready_path, timeout=2.0)
                if self.is_ready(status, body):
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise ServerFailed(f"{self.name} was not ready after {timeout:.0f} s:\n{self.log_tail()}")

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def rss_mib(self) -> Optional[float]:
        """Resident memory of the process (VmRSS), or None once it is gone."""
        try:
            with open(f"/proc/{self.pid}/status") as status:
                for line in status:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) / 1024
        except OSError:
            pass
        try:
            import psutil

            return psutil.Process(self.pid).memory_info().rss / 2**20
        except Exception:
            return None

    def log_tail(self, lines: int = 30) -> str:
        try:
            with open(self.log_path, "rb") as log:
                return b"".join(log.readlines()[-lines:]).decode("utf-8", "replace")
        except OSError:
            return ""

    def stop(self, timeout: float = 10.0) -> Optional[int]:
        """SIGTERM by pid, then SIGKILL after ``timeout`` seconds; the exit status."""
        if self in _running:
            _running.remove(self)
        if self.process is None:
            return None
        if self.process.poll() is None:
            try:
                os.kill(self.pid, signal.SIGTERM)
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.process.wait()
            except ProcessLookupError:
                pass
        if self._log is not None:
            self._log.close()
        return self.process.returncode


def get(port: int, path: str, timeout: float = 5.0) -> tuple:
    """A plain ``GET`` on loopback: (status, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def _launch(module: str, args: Sequence[str], setup: ModelSetup) -> list:
    flag = [] if setup.extra_buffers else ["--no-extra-bufts"]
    return [sys.executable, "-c", _LAUNCHER, *flag, module, *args]


def _helios_ready(status: int, body: bytes) -> bool:
    if status != 200:
        return False
    try:
        return json.loads(body).get("status") == "ok"
    except ValueError:
        return False


def helios(setup: ModelSetup, workdir: str, extra_args: Sequence[str] = ()) -> Server:
    """helios_raw serving ``setup`` (access log off, plus ``extra_args``), not yet started."""
    port = free_port()
    config = os.path.join(workdir, "helios.toml")
    with open(config, "w") as out:
        out.write(f"[local]\ncontext_size = {setup.n_ctx}\n")
    args = ["--bind", f"127.0.0.1:{port}", "--config", config, "--model", setup.model_path,
            "--threads", str(setup.threads), "--no-access-log", "--log-level", "warning"]
    if setup.chat_format:
        args += ["--chat-format", setup.chat_format]
    args += list(extra_args)
    env = dict(os.environ, PYTHONPATH=_project_path())
    return Server("helios_raw", _launch("helios_raw", args, setup), port, "/health", _helios_ready, env=env)


def llama_cpp_server(setup: ModelSetup, interrupt_requests: bool = True) -> Server:
    """llama-cpp-python's server (its FastAPI app under uvicorn, as ``python -m llama_cpp.server``
    runs it) serving ``setup``, not yet started.

    Its own defaults that would make it do more work than helios_raw are set to match:
    ``logits_all`` (True there: logits kept for every prompt token), ``use_mlock`` and ``verbose``
    (per-request timing prints). uvicorn's access log is turned off, as helios_raw's is.
    """
    port = free_port()
    args = ["--host", "127.0.0.1", "--port", str(port), "--no-access-log", "--log-level", "warning",
            "--factory", "llama_cpp.server.app:create_app"]
    # create_app() reads its settings from the environment (pydantic-settings).
    settings = {
        "MODEL": setup.model_path, "N_CTX": setup.n_ctx, "N_THREADS": setup.threads,
        "N_THREADS_BATCH": setup.threads, "LOGITS_ALL": "false", "USE_MLOCK": "false",
        "VERBOSE": "false", "INTERRUPT_REQUESTS": str(interrupt_requests).lower(),
    }
    if setup.chat_format:
        settings["CHAT_FORMAT"] = setup.chat_format
    ignored = _peer_setting_names()  # a stray HOST or MODEL in our environment must not leak in
    env = {key: value for key, value in os.environ.items() if key.upper() not in ignored}
    env.update({key: str(value) for key, value in settings.items()})
    name = "llama_cpp.server" if interrupt_requests else "llama_cpp.server --interrupt_requests False"
    return Server(name, _launch("uvicorn", args, setup), port, "/v1/models", lambda status, body: status == 200, env=env)


def http_ceiling(kind: str) -> Server:
    """One of ``benchmarks/ceilings.py``'s reference servers ("fixed" or "h11"), not yet started."""
    port = free_port()
    argv = [sys.executable, "-m", "benchmarks.ceilings", kind, "--bind", f"127.0.0.1:{port}"]
    env = dict(os.environ, PYTHONPATH=_project_path())
    return Server(f"{kind} ceiling", argv, port, "/", lambda status, body: status == 200, env=env)


def peer_missing() -> list:
    """The modules llama-cpp-python's server needs that are not installed (empty if none)."""
    missing = [name for name in ("llama_cpp",) + PEER_MODULES if importlib.util.find_spec(name) is None]
    return missing


def probe_extra_buffers(model_path: str, timeout: float = 120.0) -> bool:
    """Whether llama.cpp can evaluate a batch of this model with its extra buffer types on.

    Some virtual machines report AMX in CPUID but fault on its instructions; llama.cpp then
    crashes on the first multi-token batch. A throwaway process tries it.
    """
    code = (
        "import llama_cpp, sys\n"
        "llm = llama_cpp.Llama(sys.argv[1], n_ctx=64, verbose=False)\n"
        "llm.eval(llm.tokenize(b'The quick brown fox jumps over the lazy dog'))\n"
    )
    done = subprocess.run([sys.executable, "-c", code, model_path], stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, timeout=timeout)
    return done.returncode == 0


def _project_path() -> str:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    existing = os.environ.get("PYTHONPATH")
    return root if not existing else root + os.pathsep + existing


def _peer_setting_names() -> frozenset:
    try:
        from llama_cpp.server.settings import Settings

        return frozenset(name.upper() for name in Settings.model_fields)
    except Exception:
        return frozenset()
