"""Wall time and peak memory of a block of work: the denominators of every cost ratio.

On CPU the peak is the process's resident set (Linux ``VmHWM``, reset at the start of the
block through ``/proc/self/clear_refs`` so each block gets its own peak); on GPU it is
``torch.cuda.max_memory_allocated``. :func:`refuse_beyond_memory` is the other side: a setting whose memory
estimate exceeds the machine's physical memory is refused before any work.
"""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from forgetkit.errors import SettingError


@dataclass
class Cost:
    wall_time_s: float = 0.0
    peak_memory_mb: float = 0.0
    memory_kind: str = "cpu_rss"


def _reset_rss_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _status_mb(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _rss_peak_mb() -> float:
    peak = _status_mb("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def rss_mb() -> float:
    """The process's resident set now (MB; 0 where /proc is not available)."""
    return _status_mb("VmRSS") or 0.0


def physical_memory_bytes() -> int:
    """The machine's physical memory (bytes)."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def refuse_beyond_memory(setting: str, value: object, need_bytes: int, what: str) -> None:
    """Raise :class:`SettingError` for ``setting`` (set to ``value``) when ``need_bytes``, a lower bound of what it
    takes (``what`` says of what), exceeds the machine's physical memory: it could never run."""
    have = physical_memory_bytes()
    if need_bytes > have:
        raise SettingError(setting, f"{value} needs at least {need_bytes / 2**30:.3g} GiB for {what}, more than "
                                    f"this machine's {have / 2**30:.3g} GiB of memory")


@contextmanager
def measure(device: torch.device | str | None = None) -> Iterator[Cost]:
    """Measure the block: ``with measure(device) as cost: ...`` then read ``cost``."""
    cost = Cost()
    on_gpu = device is not None and torch.device(device).type == "cuda"
    if on_gpu:
        torch.cuda.reset_peak_memory_stats(device)
        cost.memory_kind = "cuda_max_allocated"
    else:
        _reset_rss_peak()
    start = time.perf_counter()
    try:
        yield cost
    finally:
        cost.wall_time_s = time.perf_counter() - start
        if on_gpu:
            cost.peak_memory_mb = torch.cuda.max_memory_allocated(device) / 2**20
        else:
            cost.peak_memory_mb = _rss_peak_mb()
