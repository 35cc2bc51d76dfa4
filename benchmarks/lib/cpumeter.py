"""How busy the machine was during a measurement.

Standard library only, and no import of its own package: ``roboflow_worker.py``, a script run by
path with the Roboflow venv's python (no autotimm_stream there), imports this file as a top-level
module (``from cpumeter import CpuMeter``: the script's folder is its ``sys.path[0]``), while the
rest of ``lib`` imports it as ``lib.cpumeter``."""

from __future__ import annotations

import os
import time

__all__ = ["CpuMeter", "core_count"]


def core_count() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


class CpuMeter:
    """CPU used by this process and by everything else on the machine while a measurement runs.

    ``others_cores`` (about 0 on a quiet machine) says how much of the machine other processes
    took, so a slow figure can be told apart from a loaded machine. Linux only; zeros elsewhere.
    """

    def __init__(self) -> None:
        self._t0 = time.monotonic()
        self._own0 = self._own()
        self._busy0 = self._busy()

    @staticmethod
    def _own() -> float:
        t = os.times()
        return t.user + t.system

    @staticmethod
    def _busy() -> float:
        try:
            with open("/proc/stat", encoding="ascii") as fh:
                fields = [int(v) for v in fh.readline().split()[1:]]
        except (OSError, ValueError):
            return 0.0
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> dict[str, float]:
        """Average cores busy since construction: this process, and all other processes."""
        wall = max(time.monotonic() - self._t0, 1e-9)
        own = self._own() - self._own0
        busy = self._busy() - self._busy0
        return {"own_cores": round(own / wall, 2), "others_cores": round(max(0.0, busy - own) / wall, 2)}
