"""llama.cpp's own HTTP server (``llama-server``), built from the llama.cpp that the pinned
llama-cpp-python release vendors, so it runs the same engine as helios_raw and the Python peer.

    python -m benchmarks.llama_server build [--version 0.3.36] [--jobs N] [--force]
    python -m benchmarks.llama_server path      # the cached binary's path, or exit status 1

``build`` downloads llama-cpp-python's source distribution with pip (``pip download
llama-cpp-python==VERSION --no-binary :all: --no-deps``), configures ``vendor/llama.cpp`` with
cmake (Release, static, CPU only, no OpenSSL, no network fetch of the web UI) and builds the
``llama-server`` target alone. The binary is cached as
``${XDG_CACHE_HOME:-~/.cache}/helios_raw/llama-server-VERSION/llama-server``; a machine that has it
skips the build. Both commands print the binary's path on stdout.

:func:`start` runs the binary on a free loopback port and waits for ``/health`` (usable from
benchmarks and tests). On virtual machines that advertise AMX without enabling it, llama.cpp's
extra buffer types (AMX, weight repacking) crash the first batched decode: pass
``extra_buffers=False`` and the server gets ``--no-repack``, which turns them all off at load
(llama-server's switch for the same ``no_extra_bufts`` parameter the Python peers set).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

from benchmarks.peers import ModelSetup, Server, free_port

#: The llama-cpp-python release whose vendored llama.cpp is built (.ci/constraints.txt).
DEFAULT_VERSION = "0.3.36"

#: cmake cache entries for a CPU-only, self-contained, offline build of llama-server.
CMAKE_OPTIONS = {
    "CMAKE_BUILD_TYPE": "Release",
    "BUILD_SHARED_LIBS": "OFF",        # one static binary; nothing to find at run time
    "LLAMA_CURL": "OFF",               # deprecated and ignored by recent llama.cpp, kept for older ones
    "LLAMA_OPENSSL": "OFF",            # no HTTPS model downloads
    "LLAMA_BUILD_UI": "OFF",           # no npm build of the web UI ...
    "LLAMA_USE_PREBUILT_UI": "OFF",    # ... and no download of a prebuilt one
    "LLAMA_BUILD_TESTS": "OFF",
    "LLAMA_BUILD_EXAMPLES": "OFF",
    "LLAMA_BUILD_TOOLS": "ON",         # tools/server lives there
    "LLAMA_BUILD_SERVER": "ON",
    "GGML_CUDA": "OFF", "GGML_VULKAN": "OFF", "GGML_METAL": "OFF", "GGML_HIP": "OFF",
    "GGML_SYCL": "OFF", "GGML_OPENCL": "OFF", "GGML_BLAS": "OFF", "GGML_RPC": "OFF",
}


def cache_dir(version: str = DEFAULT_VERSION) -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "helios_raw" / f"llama-server-{version}"


def cached_binary(version: str = DEFAULT_VERSION) -> Optional[Path]:
    """The cached ``llama-server`` for ``version`` if it exists and is executable."""
    path = cache_dir(version) / "llama-server"
    return path if path.is_file() and os.access(path, os.X_OK) else None


def _run(argv: Sequence[str], cwd: Optional[str] = None) -> None:
    print("+", " ".join(argv), file=sys.stderr, flush=True)
    subprocess.run(list(argv), cwd=cwd, check=True, stdout=sys.stderr)  # stdout is for the path alone


def build(version: str = DEFAULT_VERSION, jobs: Optional[int] = None, force: bool = False) -> Path:
    """Build (or reuse) llama-server from llama-cpp-python ``version``'s sdist; its path."""
    if not force and (found := cached_binary(version)):
        return found
    for tool in ("cmake", "c++"):
        if shutil.which(tool) is None:
            raise SystemExit(f"llama_server: '{tool}' is not on PATH; install cmake and a C++ compiler.")
    target_dir = cache_dir(version)
    target_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="llama-server-build-") as work:
        _run([sys.executable, "-m", "pip", "download", f"llama-cpp-python=={version}",
              "--no-binary", ":all:", "--no-deps", "-d", work])
        sdists = [name for name in os.listdir(work) if name.endswith(".tar.gz")]
        if len(sdists) != 1:
            raise SystemExit(f"llama_server: expected one sdist in {work}, found {sdists}")
        with tarfile.open(os.path.join(work, sdists[0])) as archive:
            archive.extractall(work)
        source = os.path.join(work, sdists[0][: -len(".tar.gz")], "vendor", "llama.cpp")
        if not os.path.isfile(os.path.join(source, "CMakeLists.txt")):
            raise SystemExit(f"llama_server: no vendor/llama.cpp in {sdists[0]}")
        build_dir = os.path.join(work, "build")
        generator = ["-G", "Ninja"] if shutil.which("ninja") else []
        _run(["cmake", "-S", source, "-B", build_dir, *generator,
              *(f"-D{key}={value}" for key, value in CMAKE_OPTIONS.items())])
        _run(["cmake", "--build", build_dir, "--target", "llama-server", "--config", "Release",
              "-j", str(jobs or os.cpu_count() or 2)])
        built = Path(build_dir) / "bin" / "llama-server"
        partial = target_dir / "llama-server.partial"
        shutil.copy2(built, partial)
        os.replace(partial, target_dir / "llama-server")  # atomic: a reader never sees half a file
    minutes = (time.monotonic() - started) / 60
    print(f"llama_server: built in {minutes:.1f} min", file=sys.stderr)
    return target_dir / "llama-server"


def _healthy(status: int, body: bytes) -> bool:
    return status == 200 and b'"ok"' in body


def server(setup: ModelSetup, slots: int, binary: Optional[Path] = None,
           extra_args: Sequence[str] = ()) -> Server:
    """llama-server serving ``setup`` with ``slots`` parallel sequences (``-np``), not yet started.

    The context is ``setup.n_ctx`` per slot (llama-server splits ``-c`` among its slots, so it
    gets ``n_ctx * slots``); ``--no-webui``, no warm-up run, and ``--no-repack`` when
    ``setup.extra_buffers`` is False.
    """
    binary = binary or cached_binary()
    if binary is None:
        raise FileNotFoundError("llama-server is not built; run: python -m benchmarks.llama_server build")
    port = free_port()
    argv = [str(binary), "--model", setup.model_path, "--host", "127.0.0.1", "--port", str(port),
            "--threads", str(setup.threads), "--threads-batch", str(setup.threads),
            "--ctx-size", str(setup.n_ctx * slots), "--parallel", str(slots),
            "--no-webui", "--no-warmup"]
    if not setup.extra_buffers:
        argv.append("--no-repack")
    if setup.chat_format:
        argv += ["--chat-template", setup.chat_format]
    argv += list(extra_args)
    return Server(f"llama-server -np {slots}", argv, port, "/health", _healthy)


def start(model_path: str, slots: int = 4, threads: int = 2, n_ctx: int = 2048,
          extra_buffers: bool = False, timeout: float = 120.0, extra_args: Sequence[str] = ()) -> Server:
    """Start llama-server on a free loopback port and wait for ``/health``; stop it with ``.stop()``."""
    setup = ModelSetup(model_path=model_path, threads=threads, n_ctx=n_ctx, extra_buffers=extra_buffers)
    process = server(setup, slots, extra_args=extra_args).start()
    try:
        process.wait_ready(timeout)
    except BaseException:
        process.stop()
        raise
    return process


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.llama_server", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    build_cmd = commands.add_parser("build", help="build llama-server (or reuse the cached one); print its path")
    build_cmd.add_argument("--version", default=DEFAULT_VERSION, help="llama-cpp-python release (default %(default)s)")
    build_cmd.add_argument("--jobs", type=int, default=None, help="parallel compile jobs (default: all cores)")
    build_cmd.add_argument("--force", action="store_true", help="rebuild even when a cached binary exists")
    path_cmd = commands.add_parser("path", help="print the cached binary's path (exit 1 if not built)")
    path_cmd.add_argument("--version", default=DEFAULT_VERSION)
    args = parser.parse_args(argv)
    if args.command == "build":
        print(build(args.version, args.jobs, args.force))
        return 0
    found = cached_binary(args.version)
    if found is None:
        print(f"llama-server {args.version} is not built; run: python -m benchmarks.llama_server build", file=sys.stderr)
        return 1
    print(found)
    return 0


if __name__ == "__main__":
    sys.exit(main())
