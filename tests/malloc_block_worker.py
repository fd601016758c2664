"""Allocates, fills and frees one large block with the C library's
`malloc` a few times and prints the page faults of each round as JSON.

    python tests/malloc_block_worker.py MIB {main,thread} [LIMITS_JSON]

LIMITS_JSON, if given, holds `keras_mtl.raise_malloc_limits` keyword
arguments; it is called first. The module is loaded from its file so that
Keras (and TensorFlow) do not start: their threads would take heaps of
their own before the call (tests/test_malloc_limits.py).
"""

import ctypes
import importlib.util
import json
import resource
import sys
import threading
from pathlib import Path

ROUNDS = 4


def main() -> None:
    size = int(sys.argv[1]) * 2**20
    where = sys.argv[2]
    if len(sys.argv) > 3:
        path = Path(__file__).parent.parent / "keras_mtl" / "malloc_limits.py"
        spec = importlib.util.spec_from_file_location("malloc_limits", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        assert module.raise_malloc_limits(**json.loads(sys.argv[3])) is True
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    faults: list[int] = []

    def rounds() -> None:
        for _ in range(ROUNDS):
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            block = libc.malloc(size)
            assert block
            ctypes.memset(block, 1, size)  # touches every page
            libc.free(block)
            faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)

    if where == "thread":  # as XLA's own threads allocate a step's block
        worker = threading.Thread(target=rounds)
        worker.start()
        worker.join()
    else:
        rounds()
    print(json.dumps({"faults": faults, "pages": size // resource.getpagesize()}))


if __name__ == "__main__":
    main()
