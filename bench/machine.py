"""What every benchmark's results file says about the machine it ran on."""

from __future__ import annotations

import platform


def cpu_and_memory() -> tuple[str, str]:
    """(CPU model name, total RAM as "24 GiB RAM"; "" when /proc/meminfo is unreadable)."""
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        with open("/proc/meminfo") as f:
            mem = f"{int(f.readline().split()[1]) / 2**20:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        mem = ""
    return cpu, mem


def status_mb(field: str) -> float:
    """A memory line of /proc/self/status ("VmRSS", "VmHWM", ...) in MiB; NaN when absent."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM) in MiB."""
    return status_mb("VmHWM")
