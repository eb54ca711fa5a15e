"""glibc heap tuning for a multi-threaded worker, so its memory follows its working set.

Forward passes run in whichever request thread leads the batch. By default glibc gives each
thread that contends for the heap an arena of its own (up to 8 per core), and every arena
keeps the high-water mark of the activations it once held, so a worker's memory grows with the
number of threads that ever led a batch. One arena, trimmed every second, keeps the worker near
its live set.
Elsewhere (musl, macOS) both calls do nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger("convserve.heap")

_M_ARENA_MAX = -8  # from glibc's malloc.h


def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


_LIBC = _glibc()


def available() -> bool:
    """True where the C library is glibc (the only one these knobs exist for)."""
    return _LIBC is not None


def use_single_arena() -> bool:
    """Makes every thread allocate from the main heap; True where glibc allowed it.

    Call before the request threads start: arenas that already exist stay.
    """
    return _LIBC is not None and _LIBC.mallopt(_M_ARENA_MAX, 1) == 1


def trim() -> bool:
    """Returns the heap's free pages to the system; True if any memory was released."""
    return _LIBC is not None and _LIBC.malloc_trim(0) == 1
