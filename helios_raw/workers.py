"""Several processes serving one port: ``--workers N`` (``[server] workers``).

The parent, a supervisor, binds N listening sockets to the address with ``SO_REUSEPORT`` (one
per worker) and forks the workers; worker *i* serves socket *i*. The kernel spreads new
connections over the sockets by a hash of their addresses, so every worker gets its share (with
one shared socket, whichever process wakes first takes a whole burst: asyncio accepts in a loop).
The parent keeps every socket open, so connections arriving for a worker that is being restarted
wait in its queue for the new one instead of being refused, and port 0, a port in use or a bad
address are found once, before any worker starts.

A worker that dies is started again (after a growing pause if it keeps dying young). SIGTERM or
SIGINT to the parent closes its sockets and passes SIGTERM to every worker, which stops as a
single process does: it stops accepting and lets requests in flight finish within
``shutdown_timeout``. A second signal ends the workers at once. If the first workers fail before
they serve (say, the backend cannot start), everything stops and the error is reported once.
A worker whose parent disappears stops gracefully by itself.

Workers are forked, so they inherit the built server (routes, custom endpoint handlers, an
agent's tools) as it is. Linux only: elsewhere ``SO_REUSEPORT`` does not spread connections. Each has its own event loop and backend (the remote
backend's connection pool is per worker). A local model is refused: every worker would load its
own copy of the weights and run its own compute threads on the same cores; one process serving
concurrent requests from its slots uses memory and cores better. ``/metrics`` covers all workers
(:mod:`helios_raw.metrics.peers`, over Unix sockets in a directory only this user can enter).
"""

from __future__ import annotations

import asyncio
import logging
import os
import select
import shutil
import signal
import socket
import sys
import tempfile
import time
from typing import TYPE_CHECKING, Optional

from .backends.base import BackendError
from .config import ConfigError
from .http.protocol import HTTPProtocol
from .http.server import ConnectionRegistry, HTTPServer
from .metrics import Peers

if TYPE_CHECKING:  # pragma: no cover
    from .server import Server

log = logging.getLogger("helios_raw.workers")

#: Seconds a worker must live for its death to count as a crash rather than a failed start.
_YOUNG = 1.0
#: Longest pause before restarting a worker that keeps dying young.
_MAX_PAUSE = 5.0
#: Seconds past ``shutdown_timeout`` before the workers still draining are killed.
_STOP_GRACE = 5.0


class Worker:
    """The parent's record of one worker process."""

    def __init__(self, index: int, pid: int, channel: socket.socket) -> None:
        self.index = index
        self.pid = pid
        self.channel: Optional[socket.socket] = channel
        self.started = time.monotonic()
        self.ready = False
        self.error = ""
        self._buffer = b""

    def read(self) -> None:
        """Take the worker's messages (``ready``, ``error <sentence>``); at EOF, drop the channel."""
        try:
            data = self.channel.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self.close_channel()
            return
        self._buffer += data
        while b"\n" in self._buffer:
            line, self._buffer = self._buffer.split(b"\n", 1)
            message = line.decode("utf-8", "replace")
            if message == "ready":
                self.ready = True
            elif message.startswith("error "):
                self.error = message[len("error "):]

    def close_channel(self) -> None:
        if self.channel is not None:
            self.channel.close()
            self.channel = None


class Supervisor:
    """Serves ``server`` in ``[server] workers`` forked processes until SIGTERM/SIGINT."""

    def __init__(self, server: "Server") -> None:
        self.server = server
        self.count = server.config.server.workers
        if not sys.platform.startswith("linux"):
            raise ConfigError("Several workers need Linux, whose SO_REUSEPORT spreads connections over them")
        if _serves_local_model(server.backend):
            raise ConfigError(
                f"{self.count} workers cannot serve a local model: each would load its own copy of it and run "
                "its own threads on the same cores; serve it with one worker (its slots run requests "
                "concurrently), or run several servers behind a load balancer")
        self.sockets: list[socket.socket] = []
        self.workers: dict[int, Worker] = {}
        self.directory = ""
        self.signals = 0
        self.stopping = False
        self.forced = False
        self.failure = ""
        self.served = False
        self.deadline = 0.0
        self.restarts: dict[int, float] = {}
        self.young_deaths: dict[int, int] = {}
        self._wake = (-1, -1)

    # -- the parent --------------------------------------------------------------------------

    def run(self) -> int:
        """Serve until stopped; the exit status (0, or 130 after a second signal). Raises
        ``OSError`` if the address cannot be bound and ``BackendError`` if the workers fail to start."""
        config = self.server.config.server
        self.sockets = _listening_sockets(config.host, config.port, self.count, self.server.http.backlog)
        host, port = self.sockets[0].getsockname()[:2]
        self.server.announce = False
        self.server.log_start(host, port, f" with {self.count} workers")
        self.directory = tempfile.mkdtemp(prefix="helios_raw-workers-")
        self._wake = os.pipe()
        for fd in self._wake:
            os.set_blocking(fd, False)
        handlers = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD)}
        wakeup = signal.set_wakeup_fd(self._wake[1])
        try:
            for index in range(self.count):
                self._spawn(index)
            self._supervise()
        finally:
            signal.set_wakeup_fd(wakeup)
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
            for worker in self.workers.values():  # only if supervising itself failed
                _kill(worker.pid, signal.SIGKILL)
            self._close_sockets()
            for fd in self._wake:
                os.close(fd)
            shutil.rmtree(self.directory, ignore_errors=True)
        if self.failure:
            raise BackendError(self.failure)
        return 130 if self.forced else 0

    def _on_signal(self, signum: int, frame) -> None:
        if signum != signal.SIGCHLD:
            self.signals += 1

    def _supervise(self) -> None:
        handled = 0
        while self.workers or (not self.stopping and self.restarts):
            self._reap()
            if self.signals > handled:
                handled = self.signals
                if not self.stopping:
                    log.info("shutting down %d workers", len(self.workers))
                    self._stop()
                else:
                    self.forced = True
                    self._signal_all(signal.SIGTERM)  # a worker already draining ends at once
            now = time.monotonic()
            if self.stopping and now > self.deadline:
                self._signal_all(signal.SIGKILL)
            if not self.stopping:
                for index, when in list(self.restarts.items()):
                    if now >= when:
                        del self.restarts[index]
                        self._spawn(index)
            channels = [w.channel for w in self.workers.values() if w.channel is not None]
            timeout = min([1.0] + [max(0.0, when - now) for when in self.restarts.values()])
            readable, _, _ = select.select([self._wake[0]] + channels, [], [], timeout)
            for source in readable:
                if source == self._wake[0]:
                    _drain(self._wake[0])
            for worker in list(self.workers.values()):
                if worker.channel in readable:
                    worker.read()
                    self.served = self.served or worker.ready

    def _reap(self) -> None:
        while self.workers:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            worker = next((w for w in self.workers.values() if w.pid == pid), None)
            if worker is not None:
                self._exited(worker, status)

    def _exited(self, worker: Worker, status: int) -> None:
        if worker.channel is not None:
            worker.read()  # a last "error ..." it wrote before exiting
        worker.close_channel()
        del self.workers[worker.index]
        how = _describe(status)
        if self.stopping:
            log.info("worker %d (pid %d) stopped (%s)", worker.index, worker.pid, how)
            return
        if not worker.ready and not self.served:
            self.failure = worker.error or f"Worker {worker.index} {how} before it could serve."
            self._stop()
            return
        lived = time.monotonic() - worker.started
        deaths = self.young_deaths.get(worker.index, 0) + 1 if lived < _YOUNG else 0
        self.young_deaths[worker.index] = deaths
        pause = min(_MAX_PAUSE, 0.1 * 2 ** deaths) if deaths else 0.0
        log.warning("worker %d (pid %d) %s; starting a new one%s", worker.index, worker.pid, how,
                    f" in {pause:.1f} s" if pause else "")
        self.restarts[worker.index] = time.monotonic() + pause

    def _stop(self) -> None:
        self.stopping = True
        self.restarts.clear()
        self._close_sockets()  # once the workers close theirs, new connections are refused
        self._signal_all(signal.SIGTERM)
        self.deadline = time.monotonic() + self.server.config.server.shutdown_timeout + _STOP_GRACE

    def _signal_all(self, sig: int) -> None:
        for worker in self.workers.values():
            _kill(worker.pid, sig)

    def _close_sockets(self) -> None:
        for sock in self.sockets:
            sock.close()

    def _spawn(self, index: int) -> None:
        ours, theirs = socket.socketpair()
        pid = os.fork()
        if pid == 0:  # the worker: never returns
            ours.close()
            self._become_worker(index, theirs)
        theirs.close()
        ours.setblocking(False)
        self.workers[index] = Worker(index, pid, ours)
        log.info("worker %d started (pid %d)", index, pid)

    # -- the worker --------------------------------------------------------------------------

    def _become_worker(self, index: int, channel: socket.socket) -> None:
        code = 1
        try:
            os.setpgid(0, 0)  # a terminal's Ctrl-C reaches the parent only, which passes it on
            signal.set_wakeup_fd(-1)
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD):
                signal.signal(sig, signal.SIG_DFL)
            os.close(self._wake[0])
            os.close(self._wake[1])
            for worker in self.workers.values():
                worker.close_channel()
            for number, sock in enumerate(self.sockets):
                if number != index:
                    sock.close()
            _label_logs(index)
            code = asyncio.run(self._serve(index, channel))
        except BaseException as exc:  # nothing may escape a forked child: its parent's code follows
            log.error("worker %d failed", index, exc_info=exc)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)

    async def _serve(self, index: int, channel: socket.socket) -> int:
        server = self.server
        server.http = _SocketServer(server.app, self.sockets[index], server.config.server.limits)
        peers = Peers(self.directory, index, self.count) if server.config.server.metrics else None
        server.metrics_route.peers = peers
        loop = asyncio.get_running_loop()
        channel.setblocking(False)
        loop.add_reader(channel.fileno(), _watch_parent, channel, loop)
        try:
            if peers is not None:
                await peers.start(server.metrics_route.snapshot)
            await server.run_until_signal(on_ready=lambda: channel.send(b"ready\n"))
            return 0
        except BackendError as exc:
            _report(channel, str(exc))
        except Exception as exc:
            log.debug("worker %d could not serve", index, exc_info=exc)
            _report(channel, f"Worker {index} could not serve: {type(exc).__name__}: {exc}")
        finally:
            loop.remove_reader(channel.fileno())
            if peers is not None:
                await peers.close()
        return 1


class _SocketServer(HTTPServer):
    """An :class:`HTTPServer` serving a socket already bound and listening (the parent's)."""

    def __init__(self, app, sock: socket.socket, limits) -> None:
        host, port = sock.getsockname()[:2]
        super().__init__(app, host, port, limits)
        self.sock = sock

    async def start(self) -> tuple[str, int]:
        self.registry = registry = ConnectionRegistry(self.limits)
        self._server = await asyncio.get_running_loop().create_server(
            lambda: HTTPProtocol(self.app, self.limits, registry), sock=self.sock, backlog=self.backlog)
        return self.host, self.port


def _listening_sockets(host: str, port: int, count: int, backlog: int) -> list[socket.socket]:
    """``count`` sockets listening on one address with ``SO_REUSEPORT`` (port 0: the first one's).

    A port already listened on is refused as a single process would refuse it, even by sockets
    that would let ours join them (another server started with workers on the same port)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_UNSPEC
    info = socket.getaddrinfo(host, port, family, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)[0]
    address = info[4]
    if port:
        with socket.socket(info[0], socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(info[0], socket.SOCK_STREAM)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(address)
            address = sock.getsockname()
            sock.listen(backlog)
            sock.setblocking(False)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def _serves_local_model(backend) -> bool:
    """Whether ``backend`` serves a local model: itself, one of a router's models, or the
    backend an agent runs over."""
    local = sys.modules.get("helios_raw.backends.local")  # not imported: no local backend exists
    if local is None or backend is None:
        return False
    if isinstance(backend, local.LocalBackend):
        return True
    entries = getattr(backend, "entries", ())
    return any(entry.loadable or _serves_local_model(entry.backend) for entry in entries) or \
        _serves_local_model(getattr(backend, "inner", None))


def _watch_parent(channel: socket.socket, loop: asyncio.AbstractEventLoop) -> None:
    """The parent's end of ``channel`` closed: it is gone, so stop as on SIGTERM."""
    try:
        if channel.recv(64):
            return
    except (BlockingIOError, InterruptedError):
        return
    except OSError:
        pass
    loop.remove_reader(channel.fileno())
    os.kill(os.getpid(), signal.SIGTERM)


def _report(channel: socket.socket, sentence: str) -> None:
    try:
        channel.setblocking(True)
        channel.sendall(b"error " + sentence.replace("\n", " ").encode() + b"\n")
    except OSError:
        pass


def _label_logs(index: int) -> None:
    """Put ``[worker N]`` before every message this process logs."""
    for handler in logging.getLogger().handlers:
        formatter = handler.formatter or logging.Formatter()
        fmt = formatter._fmt or "%(message)s"
        handler.setFormatter(logging.Formatter(fmt.replace("%(message)s", f"[worker {index}] %(message)s"),
                                               formatter.datefmt))


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"was killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exited with status {os.WEXITSTATUS(status)}"


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except (BlockingIOError, InterruptedError):
        pass
