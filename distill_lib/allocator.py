"""glibc allocator thresholds that keep torch's large CPU activation buffers in the heap.

With glibc's defaults every buffer above the mmap threshold (at most 32 MiB, e.g. a ConvNet layer's output for a
batch of 256 CIFAR-10 images, 134 MB) is mmap'ed on allocation and returned to the OS on free, so each op of each
iteration page-faults its output in again. Raising the mmap and trim thresholds keeps freed buffers for reuse
(measurements: docs/speed.md).

``import distill_lib`` applies it once per process (:func:`tune`), unless the environment variable
``DISTILL_MALLOC_TUNING=0`` is set or the user already chose thresholds (``MALLOC_MMAP_THRESHOLD_`` /
``MALLOC_TRIM_THRESHOLD_``, read by glibc at start). Cost: up to ``TRIM_THRESHOLD`` bytes of freed memory stay with
the process instead of going back to the OS. Elsewhere (macOS, musl, Windows) it does nothing.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameter numbers from glibc's malloc.h
MMAP_THRESHOLD = 1 << 30  # 1 GiB: buffers smaller than this come from the heap
TRIM_THRESHOLD = (1 << 31) - 1  # ~2 GiB (mallopt takes an int): free memory kept before returning it to the OS
ENV_SWITCH = "DISTILL_MALLOC_TUNING"
USER_VARS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")

state = "not applied"  # what tune() did, for benchmark headers: "tuned", or why not


def tune() -> str:
    """Raise glibc's mmap and trim thresholds (see the module docstring); returns and records what happened."""
    global state
    if os.environ.get(ENV_SWITCH, "1") == "0":
        state = f"glibc defaults ({ENV_SWITCH}=0)"
    elif any(name in os.environ for name in USER_VARS):
        state = "the user's " + ", ".join(f"{n}={os.environ[n]}" for n in USER_VARS if n in os.environ)
    elif not sys.platform.startswith("linux") or not _glibc():
        state = "not glibc: allocator unchanged"
    else:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        done = libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and libc.mallopt(M_TRIM_THRESHOLD,
                                                                                    TRIM_THRESHOLD) == 1
        state = f"tuned (mmap threshold {MMAP_THRESHOLD >> 20} MiB, trim threshold ~2 GiB)" if done else \
            "mallopt refused the thresholds: glibc defaults"
    return state


def _glibc() -> bool:
    try:
        ctypes.CDLL(None).gnu_get_libc_version
        return True
    except (AttributeError, OSError):
        return False
