"""CPU priority of the support threads: the model's threads run first.

On a CPU run the forward pass spreads each operator over every core (torch's OpenMP team) and
waits at the end of it for the slowest thread. A decode, preprocessing or sink thread that takes
one core for a few milliseconds therefore stalls the whole team, not one core's share: the
support work costs the model about twice what it costs the CPU. Run at the lowest normal priority
(nice 19), that work fills the moments the team leaves the cores free instead (between operators,
between batches) and still gets a share when it must (measured: benchmarks/README.md, "What the
figures led to").

Only where nothing is waiting in real time: files read at full speed (``block``). A live capture
thread at low priority could fall behind its camera while the model is busy, so live sources and
everything downstream of them keep normal priority. Linux only (a thread's nice value is per
thread there); a lowered priority cannot be raised again without privileges, so the choice is made
once, when a thread starts.
"""

from __future__ import annotations

import logging
import os
import sys
import threading

__all__ = ["BACKGROUND_NICE", "PRIORITIES", "lower_this_thread", "thread_nice"]

_logger = logging.getLogger(__name__)

BACKGROUND_NICE = 19
PRIORITIES = ("auto", "low", "normal")


def lower_this_thread(nice: int = BACKGROUND_NICE) -> bool:
    """Give the calling thread (and threads it starts later, such as FFmpeg's) nice ``nice``.

    True when done; False where the platform has no per-thread nice value or the call failed
    (logged at debug level: a missed priority change costs speed, never correctness).
    """
    if not sys.platform.startswith("linux"):
        return False
    tid = threading.get_native_id()
    try:
        if os.getpriority(os.PRIO_PROCESS, tid) >= nice:
            return True
        os.setpriority(os.PRIO_PROCESS, tid, nice)
    except OSError as exc:
        _logger.debug("could not lower the priority of thread %s: %s", threading.current_thread().name, exc)
        return False
    return True


def thread_nice() -> int | None:
    """The calling thread's nice value (None where it is not per thread)."""
    if not sys.platform.startswith("linux"):
        return None
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
