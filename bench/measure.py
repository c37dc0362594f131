"""Shared by the benchmarks."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path


def peak_rss_mb(proc: subprocess.Popen[bytes]) -> float:
    """Peak RSS of a child until it exits, in MB, from its VmHWM (getrusage's
    ru_maxrss would also count the benchmark process as it was before exec)."""
    peak = 0
    status = Path(f"/proc/{proc.pid}/status")
    while proc.poll() is None:
        try:
            for line in status.read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]))
        except (OSError, ValueError):
            pass  # exiting
        time.sleep(0.01)
    return peak / 1024
