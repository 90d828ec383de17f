"""Debian's nginx run on loopback for tests: its own prefix, config and logs in a temporary
directory (not the system service), serving ``examples/nginx/helios_raw.conf`` with the
instances' ports filled in."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Optional

EXAMPLE = Path(__file__).resolve().parent.parent.parent / "examples" / "nginx" / "helios_raw.conf"
BINARY = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.path.exists(p)), None)

_MAIN = """\
daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{
    worker_connections 256;
}}
http {{
    access_log {d}/access.log;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    include {d}/helios_raw.conf;
}}
"""


class Nginx:
    """nginx on 127.0.0.1:``port`` in front of the instances on ``first`` and ``second``;
    ``fail_timeout`` replaces the example's (10s). ``client_sndbuf`` (e.g. ``16k``) fixes the
    send buffer of client connections, which the kernel otherwise grows to megabytes on loopback:
    for a test whose client stops reading to hold the answer back."""

    def __init__(self, directory: Path, first: int, second: int, fail_timeout: str = "10s",
                 client_sndbuf: str = "") -> None:
        self.directory = directory
        self.process: Optional[subprocess.Popen] = None
        for _ in range(5):  # the port is chosen free, then bound by nginx: another may take it between
            self.port = _free_port()
            self._write_config(first, second, fail_timeout, client_sndbuf)
            if self._start():
                return
        raise RuntimeError(f"nginx did not start:\n{self.error_log()}")

    def _write_config(self, first: int, second: int, fail_timeout: str, client_sndbuf: str) -> None:
        text = EXAMPLE.read_text()
        listen = f"listen 127.0.0.1:{self.port}" + (f" sndbuf={client_sndbuf};" if client_sndbuf else ";")
        for old, new in (("127.0.0.1:8001 ", f"127.0.0.1:{first} "), ("127.0.0.1:8002 ", f"127.0.0.1:{second} "),
                         ("listen 127.0.0.1:8080;", listen), ("fail_timeout=10s", f"fail_timeout={fail_timeout}")):
            assert old in text, f"the example config no longer has {old!r}"
            text = text.replace(old, new)
        (self.directory / "helios_raw.conf").write_text(text)
        (self.directory / "nginx.conf").write_text(_MAIN.format(d=self.directory))

    def _start(self) -> bool:
        d = self.directory
        self.process = subprocess.Popen([BINARY, "-p", str(d), "-c", str(d / "nginx.conf"), "-e", str(d / "error.log")],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return True
            except ConnectionRefusedError:
                time.sleep(0.02)
        self.stop()
        return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def error_log(self) -> str:
        path = self.directory / "error.log"
        return path.read_text() if path.exists() else ""

    def __enter__(self) -> "Nginx":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
