"""The server under test: ``python -m helios_raw`` as a subprocess on 127.0.0.1, port 0.

It serves the tiny test model (``tests/support/tiny_model.py``, built once into the work folder)
or nothing (``--no-model``), plus a few custom endpoints, with the limits the run asks for. The
:class:`Target` knows its port (read from the "listening on" log line), its resident memory and
open file descriptors (``/proc``), and reads its log incrementally for unhandled exceptions
(:data:`LOG_ALARMS`). It is stopped by its process id, and restarted after a crash.
"""

from __future__ import annotations

import os
import re
import resource
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Optional

from benchmarks.peers import die_with_parent

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

#: Lines in the server's log that mean an exception nobody handled, or a dying interpreter.
LOG_ALARMS = ("Traceback", "Exception in callback", "Fatal Python error", "Task exception was never retrieved",
              "Segmentation fault")
_LISTENING = re.compile(rb"listening on http://[^:\s]+:(\d+)")
#: The first line of a log record (helios_raw's format starts each with the date).
_RECORD = re.compile(rb"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")
#: An access log line of a 5xx answer; the group is the client's port.
_ACCESS_5XX = re.compile(rb'helios_raw\.access: 127\.0\.0\.1:(\d+) - "[^"]*" 5\d\d ')

#: Custom endpoints every target serves (a static JSON answer each; one is large, for clients
#: that never read).
ENDPOINTS_TOML = """\
[[endpoints]]
method = "GET"
path = "/api/version"
response = {{ version = "1.0", name = "reliability" }}

[[endpoints]]
method = "GET"
path = "/api/items/{{item_id}}"
response = {{ item = "static" }}

[[endpoints]]
method = "POST"
path = "/api/echo"
response = {{ accepted = true }}
status_code = 201

[[endpoints]]
method = "PUT"
path = "/api/items/{{item_id}}/tags/:tag"
response = {{ updated = true }}

[[endpoints]]
method = "GET"
path = "/api/large"
response = {{ data = "{large}" }}
"""
LARGE_RESPONSE_BYTES = 1 << 20


@dataclass
class Settings:
    """How the target is started. ``limits`` become ``[server.limits]``. ``memory_limit`` caps
    the process's address space (RLIMIT_AS), so that a request that makes it allocate without
    bound fails there instead of exhausting the machine."""

    model: bool = True
    limits: dict = field(default_factory=dict)
    max_queue: int = 64
    max_tokens: int = 32
    access_log: bool = True
    memory_limit: int = 4 << 30


@dataclass
class Alarm:
    """An alarming stretch of the server's log, with the wall time it was read, and the client
    port of the request whose 5xx access log line follows it (0 if none does)."""

    at: float
    line: str
    excerpt: str
    port: int = 0


class Target:
    def __init__(self, workdir: str, settings: Settings, name: str = "server") -> None:
        self.workdir, self.settings, self.name = workdir, settings, name
        self.process: Optional[subprocess.Popen] = None
        self.port = 0
        self.log_path = ""
        self._log_offset = 0
        self._partial = b""
        self._held_since = 0.0
        self.alarms: list[Alarm] = []
        self.starts = 0
        self.model_path = os.path.join(workdir, "tiny.gguf") if settings.model else None

    # -- life cycle -----------------------------------------------------------------------------

    def _files(self) -> list:
        endpoints = os.path.join(self.workdir, "endpoints.toml")
        with open(endpoints, "w") as out:
            out.write(ENDPOINTS_TOML.format(large="x" * LARGE_RESPONSE_BYTES))
        config = os.path.join(self.workdir, "server.toml")
        with open(config, "w") as out:
            out.write("[server.limits]\n")
            for key, value in self.settings.limits.items():
                out.write(f"{key} = {value}\n")
            if self.settings.model:
                out.write(f"[local]\nmodel_path = {self.model_path!r}\nmodel_name = \"tiny\"\n"
                          f"max_queue = {self.settings.max_queue}\nmax_tokens = {self.settings.max_tokens}\n"
                          "n_threads = 1\n")
        if self.settings.model and not os.path.exists(self.model_path):
            if ROOT not in sys.path:
                sys.path.insert(0, ROOT)
            from tests.support.tiny_model import build_tiny_gguf

            build_tiny_gguf(self.model_path)
        argv = [sys.executable, "-m", "helios_raw", "--bind", "127.0.0.1:0", "--config", config,
                "--custom-endpoints", endpoints, "--log-level", "info"]
        if not self.settings.model:
            argv.append("--no-model")
        if not self.settings.access_log:
            argv.append("--no-access-log")
        return argv

    def start(self, timeout: float = 60.0) -> "Target":
        argv = self._files()
        self.starts += 1
        self.log_path = os.path.join(self.workdir, f"{self.name}-{self.starts}.log")
        self._log_offset, self._partial, self._held_since = 0, b"", 0.0
        log = open(self.log_path, "wb")
        env = dict(os.environ, PYTHONPATH=ROOT + (os.pathsep + os.environ["PYTHONPATH"]
                                                  if os.environ.get("PYTHONPATH") else ""),
                   PYTHONFAULTHANDLER="1")
        limit = self.settings.memory_limit

        def cap_memory() -> None:
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
            die_with_parent()

        self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                        env=env, cwd=self.workdir, start_new_session=True, preexec_fn=cap_memory)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with open(self.log_path, "rb") as f:
                found = _LISTENING.search(f.read())
            if found:
                self.port = int(found.group(1))
                if self._ready():
                    return self
            if self.process.poll() is not None:
                raise RuntimeError(f"helios_raw exited ({self.process.returncode}) while starting:\n{self.log_tail()}")
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"helios_raw was not ready after {timeout:.0f} s:\n{self.log_tail()}")

    def _ready(self) -> bool:
        import http.client

        try:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
            conn.request("GET", "/health")
            body = conn.getresponse().read()
            conn.close()
        except OSError:
            return False
        return b'"ok"' in body or not self.settings.model

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def exit_status(self) -> Optional[int]:
        return None if self.process is None else self.process.poll()

    def stop(self, timeout: float = 15.0) -> Optional[int]:
        """SIGTERM by pid, SIGKILL after ``timeout``; the exit status."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            try:
                os.kill(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait()
            except ProcessLookupError:
                pass
        self.read_log(final=True)
        return self.process.returncode

    def restart(self) -> None:
        self.stop()
        self.start()

    # -- observation ----------------------------------------------------------------------------

    def rss_mib(self) -> Optional[float]:
        try:
            with open(f"/proc/{self.process.pid}/status") as status:
                for line in status:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) / 1024
        except (OSError, AttributeError):
            return None
        return None

    def fd_count(self) -> Optional[int]:
        try:
            return len(os.listdir(f"/proc/{self.process.pid}/fd"))
        except (OSError, AttributeError):
            return None

    def read_log(self, final: bool = False) -> list[Alarm]:
        """New alarms since the last call (also kept in ``self.alarms``). An alarm's excerpt runs
        to the next log record or 200 lines; the 5xx access log line within 30 lines after it
        gives the request's port. An alarm whose lines are not all in the file yet waits for the
        next call, up to a second (``final`` takes what is there)."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self._log_offset)
                data = f.read()
        except OSError:
            return []
        self._log_offset += len(data)
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        found, index = [], 0
        while index < len(lines):
            decoded = lines[index].decode("utf-8", "replace")
            if not any(alarm in decoded for alarm in LOG_ALARMS):
                index += 1
                continue
            end = index + 1
            while end < len(lines) and end - index < 200 and not _RECORD.match(lines[end]):
                end += 1
            # The request's own access log line comes soon after, between others' lines.
            answered = next((m for m in map(_ACCESS_5XX.search, lines[end:end + 30]) if m), None)
            if (end == len(lines) or (answered is None and end + 30 > len(lines))) and not final:
                self._held_since = self._held_since or time.monotonic()
                if time.monotonic() - self._held_since < 1.0:
                    # Not complete yet: keep it (and what follows) for the next call.
                    self._partial = b"\n".join(lines[index:] + [self._partial])
                    break
            self._held_since = 0.0
            excerpt = b"\n".join(lines[index:end]).decode("utf-8", "replace")
            found.append(Alarm(time.time(), decoded, excerpt, int(answered.group(1)) if answered else 0))
            index = end  # the record after the incident may itself be an alarm
        self.alarms.extend(found)
        return found

    def log_tail(self, lines: int = 30) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return b"".join(f.readlines()[-lines:]).decode("utf-8", "replace")
        except OSError:
            return ""
