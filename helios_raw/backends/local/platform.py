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


def quiet_openmp_waits() -> None:
    """Make llama.cpp's OpenMP threads sleep, not spin, while they wait for each other (unless the
    user chose a wait policy). Must run before llama.cpp is first imported.

    Spinning threads each claim a core between the steps of a decode; when the machine has no
    core to spare (the event loop's own thread, other processes) a decode waits for the scheduler
    at every step. Measured on a loaded 2-core machine, 1,800 tokens of the tiny test model took
    206 s with two spinning threads, 5.2 s with one thread and 3.7 s with two sleeping threads."""
    if not any(name in os.environ for name in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")):
        os.environ["OMP_WAIT_POLICY"] = "passive"


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


