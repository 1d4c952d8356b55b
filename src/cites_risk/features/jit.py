"""numba compilation with the machine code cached on disk, where a cache can be written.

The history features' running totals and TreeSHAP are both compiled loops; each process
would otherwise pay about a second per kernel for compiling them again.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from numba import njit


def compiled(function: Callable[..., Any]) -> Any:
    """``function`` compiled without the interpreter lock (callers run it in threads)."""
    try:
        return njit(nogil=True, cache=True)(function)
    except RuntimeError:  # nowhere writable to cache the machine code: compile per process
        return njit(nogil=True)(function)


def usable_cores() -> int:
    """Cores this process may be scheduled on (its CPU affinity; a CPU quota is not seen)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1
