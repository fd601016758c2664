"""Keep a compiled CPU step's temporary memory in glibc's heap."""

from __future__ import annotations

import ctypes
import os
import sys
import warnings
from collections.abc import Callable

# glibc's `mallopt` parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8

_MiB = 2**20
_INT_MAX = 2**31 - 1  # `mallopt` takes a C int


def raise_malloc_limits(
    mmap_threshold: int = 256 * _MiB,
    trim_threshold: int = 512 * _MiB,
    single_arena: bool = True,
) -> bool:
    """Raises glibc `malloc`'s limits: a CPU step's temporaries stay in the heap.

    On CPU under Linux, XLA as JAX runs it allocates all the temporary
    buffers of a compiled step as one block and frees it when the step
    ends; PyTorch's CPU allocator likewise returns its large blocks. glibc
    serves a block above its `mmap` threshold (adjusted at run time, at
    most 32 MiB) with a new `mmap`, and a block above 64 MiB requested from
    a thread other than the main one (whose heap is at most 64 MiB)
    likewise; `free` unmaps it. Every page the step touches is then faulted
    in and zeroed again at every step. An aggregator's step holds more
    temporaries than a plain one (the per-task rows; on the Jacobian path
    the `[K, D]` Jacobian), so it pays most. Measured on JAX
    (docs/performance.md, "JAX on CPU: fresh pages every step"): with these
    limits, GradDrop's step on an MLP of width 1024 took 69-86 ms instead
    of 99-108, UPGrad's 48 instead of 55-57, and a plain step of the
    benchmark CNN 31 instead of 50. TensorFlow keeps its buffers in its own
    allocator and neither gains nor loses.

    This sets, for the whole process, what the environment variable
    `GLIBC_TUNABLES=glibc.malloc.arena_max=1:glibc.malloc.mmap_threshold=268435456:glibc.malloc.trim_threshold=536870912`
    sets before Python starts: blocks up to `mmap_threshold` come from the
    heap, freed memory is kept up to `trim_threshold` (returned to the
    system above it), and with `single_arena` every thread allocates from
    the main heap, which has no 64 MiB bound. The process then keeps up to
    `trim_threshold` bytes it no longer uses.

    Call it first, before the first JAX computation (or PyTorch's first
    parallel operation): a thread's heap is chosen at its first
    allocation, so threads started earlier keep their own (the thresholds
    still hold for them, but their blocks above 64 MiB are still mapped
    afresh). A warning says so when JAX has already started.

    Args:
        mmap_threshold: bytes; larger blocks are mapped by `mmap` (and
            unmapped on `free`), smaller ones come from the heap. Between 1
            and 2**31 - 1.
        trim_threshold: bytes of free memory at the heap's top above which
            glibc returns it to the system. Between 0 and 2**31 - 1.
        single_arena: every thread allocates from the main heap (glibc's
            `arena_max` 1), so that blocks above 64 MiB from XLA's threads
            (a Jacobian's step) come from the heap too.

    Returns:
        True if glibc took every setting; False where the C library is not
        glibc (macOS, Windows, musl), and nothing was changed, or where
        glibc refused a setting (a warning names it; the others hold).

    Example:

    ```python
    import keras_mtl

    keras_mtl.raise_malloc_limits()  # first, before any JAX computation
    model = keras_mtl.MultiTaskModel(net, aggregator="upgrad")
    ```
    """
    for name, value, low in (
        ("mmap_threshold", mmap_threshold, 1),
        ("trim_threshold", trim_threshold, 0),
    ):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int (bytes), got {value!r}.")
        if not low <= value <= _INT_MAX:
            raise ValueError(
                f"{name} must be between {low} and {_INT_MAX} bytes, got {value}."
            )
    mallopt = _glibc_mallopt()
    if mallopt is None:
        return False
    if single_arena and _jax_has_started():
        warnings.warn(
            "raise_malloc_limits() was called after JAX started: the threads "
            "XLA has already started keep their own heaps, so their blocks "
            "above 64 MiB are still mapped afresh at every step. Call it "
            "before the first JAX computation, or set GLIBC_TUNABLES before "
            "Python starts (docs/backends.md).",
            stacklevel=2,
        )
    settings = [
        ("mmap_threshold", _M_MMAP_THRESHOLD, mmap_threshold),
        ("trim_threshold", _M_TRIM_THRESHOLD, trim_threshold),
    ]
    if single_arena:
        # First: an arena is chosen at a thread's first allocation.
        settings.insert(0, ("single_arena", _M_ARENA_MAX, 1))
    refused = [
        f"{name}={value}"
        for name, param, value in settings
        if mallopt(param, value) != 1
    ]
    if refused:
        why = ""
        if any(r.startswith("mmap_threshold") for r in refused):
            why = " (older glibc versions bound the mmap threshold at 32 MiB)"
        warnings.warn(
            f"glibc's mallopt refused {', '.join(refused)}{why}; the other "
            "settings hold.",
            stacklevel=2,
        )
    return not refused


def _glibc_mallopt() -> Callable[[int, int], int] | None:
    """glibc's `mallopt`, or None where the C library is another one."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION"):
            return None
    except (ValueError, OSError):  # not glibc (musl has no such name)
        return None
    function = ctypes.CDLL(None).mallopt
    function.argtypes = [ctypes.c_int, ctypes.c_int]
    function.restype = ctypes.c_int
    return function


def _jax_has_started() -> bool:
    """Whether JAX has created its backends (and XLA's threads with them)."""
    if "jax" not in sys.modules:
        return False
    try:
        from jax._src import xla_bridge
    except ImportError:  # a JAX without this module: do not guess
        return False
    return bool(xla_bridge.backends_are_initialized())
