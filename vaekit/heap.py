"""glibc's heap: let freed blocks be reused instead of unmapped and faulted in again.

glibc's malloc (``mallopt(3)``, "M_MMAP_THRESHOLD") serves a request at or above its mmap
threshold with a fresh mapping and unmaps it on free, and hands the top of its heap back to the
kernel once more than its trim threshold lies free there. Both thresholds start at 128 KiB and
rise by themselves: freeing a mapped block of size s, up to a ceiling of 32 MiB on 64-bit
systems, raises the mmap threshold to s and the trim threshold to 2 s. Where they stand after a
process's first allocations depends on what it happened to allocate, so the same evaluation can
reuse its heap in one process and, in the next, map and fault in every block of every pass
anew: each 4 KiB page a minor page fault, expensive on a virtual machine.

:func:`prime` frees one mapped block just under the ceiling, once per process, which moves the
thresholds where the heap's own first large free would have moved them: blocks up to ~31 MiB come
from the heap and at most ~62 MiB of its free top stays mapped. It never lowers a threshold and
does nothing where the user has set one (``MALLOC_MMAP_THRESHOLD_`` or ``mallopt`` turns the
adjustment off) or where the C library is not glibc. The library primes (the trainer and the
importance sampler on the CPU): it costs nothing and bounds nothing.

A training step's largest tensors can exceed the ceiling (a PixelCNN decoder's feature maps at
batch 128), and those still fault in every step. :func:`keep` goes further, for a process that
only trains: every block up to 1 GiB from the heap, and up to 2 GiB of free heap left mapped, so
that after the first steps the process holds its peak heap and nothing faults. That is a choice
about the whole process, so it is the command line's (``vaekit train``), not the library's, and it
too gives way to any malloc setting of the user's.
"""

from __future__ import annotations

import ctypes
import os
import platform

import torch

BLOCK_BYTES = 31 << 20  # under glibc's ceiling for the adjustment, DEFAULT_MMAP_THRESHOLD_MAX = 32 MiB
KEEP_MMAP_BYTES = 1 << 30
KEEP_TRIM_BYTES = (1 << 31) - 1  # mallopt takes an int
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers, <malloc.h>
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")

_primed = False


def is_glibc() -> bool:
    """Whether this process runs on GNU libc, whose malloc :func:`prime` and :func:`keep` set."""
    return platform.libc_ver()[0] == "glibc"


def prime() -> None:
    """Raise glibc's dynamic mmap and trim thresholds to their ceiling (module docstring); once per
    process, and free: the block is mapped and unmapped without touching its pages."""
    global _primed
    if _primed:
        return
    _primed = True
    if is_glibc():
        block = torch.empty(BLOCK_BYTES, dtype=torch.uint8)  # mapped, its pages never touched
        del block


def user_set() -> bool:
    """Whether this process's environment sets glibc's malloc (``MALLOC_*_`` or ``GLIBC_TUNABLES``)."""
    return any(k in os.environ for k in USER_SETTINGS) or "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", "")


def keep() -> bool:
    """Serve blocks up to 1 GiB from the heap and leave up to 2 GiB of its free top mapped, for the
    rest of the process (module docstring). Returns whether it did: not where the C library is not
    glibc or the environment sets malloc itself."""
    if not is_glibc() or user_set():
        return False
    mallopt = ctypes.CDLL(None).mallopt
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return bool(mallopt(M_MMAP_THRESHOLD, KEEP_MMAP_BYTES)) and bool(mallopt(M_TRIM_THRESHOLD, KEEP_TRIM_BYTES))
