"""Guards for the machine llama.cpp runs on, and model parameters llama-cpp-python does not expose."""

from __future__ import annotations

import contextlib
import threading
from typing import Any

_PARAMS_LOCK = threading.Lock()


@contextlib.contextmanager
def model_params(**overrides: Any):
    """Make ``llama_cpp.Llama()`` load with ``overrides`` of llama.cpp's model parameters (it
    exposes no argument for them): its ``llama_model_default_params`` is wrapped meanwhile."""
    import llama_cpp.llama_cpp as bindings

    with _PARAMS_LOCK:
        defaults = bindings.llama_model_default_params

        def patched():
            params = defaults()
            for name, value in overrides.items():
                setattr(params, name, value)
            return params

        bindings.llama_model_default_params = patched
        try:
            yield
        finally:
            bindings.llama_model_default_params = defaults


def cpu_advertises_amx() -> bool:
    """Whether the CPU claims Intel AMX. llama.cpp then moves quantised weights into AMX buffers,
    and on virtual machines that advertise AMX without enabling it every batched decode dies of
    a general protection fault (seen on this project's machines, where decoding without those
    buffers was also faster). With AMX advertised, the local backend loads without them."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return " amx_tile" in line or " amx_int8" in line
    except OSError:
        pass
    return False


