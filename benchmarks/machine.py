"""What every benchmark prints about the machine it ran on."""

from __future__ import annotations

import platform
import statistics
import time
from pathlib import Path


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (Linux), else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:  # not Linux: fall back below
        pass
    return platform.processor() or platform.machine()


def memory_read_gbs(mib: int = 256, reps: int = 9) -> float:
    """Read bandwidth of main memory in GB/s, as torch's multi-threaded sum sees it: the
    median over ``reps`` sums of an fp32 tensor of ``mib`` MiB (8x this machine's L3)."""
    import torch

    a = torch.ones(mib * 2**20 // 4)
    a.sum()  # first touch and thread start-up, untimed
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        a.sum()
        times.append(time.perf_counter() - t0)
    return a.numel() * 4 / statistics.median(times) / 1e9
