"""What llama.cpp should know about the machine it runs on."""

from __future__ import annotations

import os


def physical_cores() -> int:
    """CPU cores this process may run on, counting each physical core once (as llama.cpp does)."""
    try:
        allowed = os.sched_getaffinity(0)
    except AttributeError:  # pragma: no cover - not Linux
        allowed = set(range(os.cpu_count() or 1))
    cores = set()
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            processor = package = None
            for line in f:
                key, _, value = line.partition(":")
                key, value = key.strip(), value.strip()
                if key == "processor":
                    processor = int(value)
                elif key == "physical id":
                    package = value
                elif key == "core id" and processor in allowed:
                    cores.add((package, value))
    except (OSError, ValueError):
        pass
    return max(1, min(len(cores) or len(allowed), len(allowed)))


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


