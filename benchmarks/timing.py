"""Timing and peak-memory measurement shared by every benchmark.

`measure(fn)` runs `fn` a few times after a warm-up and returns the median wall time and the peak
memory the calls added: on CUDA from the allocator's peak counter, on the CPU from the process's
resident-set high-water mark (VmHWM, reset through /proc/self/clear_refs before the runs).
"""
from __future__ import annotations

import ctypes
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch


@dataclass
class Measurement:
    median_s: float
    peak_mem_bytes: int
    runs: int


def _proc_status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_cpu_peak() -> bool:
    """Release freed heap memory to the OS (else a warmed-up allocator reuses resident blocks and
    the high-water mark misses them), then reset the mark."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(fn: Callable[[], object], device: str | torch.device = "cpu", repeats: int = 5, warmup: int = 1) -> Measurement:
    """Median seconds of `repeats` calls of `fn` after `warmup` calls, and the peak extra memory
    of one further call (CPU: resident-set high-water mark above the level before it)."""
    device = torch.device(device)
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    # Peak memory from one more call, apart from the timed ones (resetting costs time).
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        _sync(device)
        peak = torch.cuda.max_memory_allocated(device) - base
    else:
        base = (_proc_status_kib("VmRSS") or 0) * 1024 if _reset_cpu_peak() else None
        fn()
        hwm = _proc_status_kib("VmHWM")
        peak = max(hwm * 1024 - base, 0) if (base is not None and hwm is not None) else -1
    return Measurement(statistics.median(times), int(peak), repeats)


def machine_name(device: str | torch.device = "cpu") -> str:
    """The CPU model or GPU name to print beside every figure."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({torch.get_num_threads()} threads)"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"
