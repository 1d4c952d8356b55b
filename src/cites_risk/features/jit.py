"""numba compilation with the machine code cached on disk, where a cache can be written.

The history features' running totals and TreeSHAP are both compiled loops; each process
would otherwise pay about a second per kernel for compiling them again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from numba import njit


def compiled(function: Callable[..., Any]) -> Any:
    """``function`` compiled without the interpreter lock (callers run it in threads)."""
    try:
        return njit(nogil=True, cache=True)(function)
    except RuntimeError:  # nowhere writable to cache the machine code: compile per process
        return njit(nogil=True)(function)
