"""The replica hooks of `MultiTaskStep` (step.py) for a trainer whose step
is one program on one device, the JAX and torch trainers': one replica,
every reduction the identity (a `keras.distribution` on JAX shards the
batch inside the compiled step, whose reductions are already global), and
variables created where they are asked for (no graph to lift them out of).
"""

from __future__ import annotations

import contextlib
from typing import Any


class SingleDevice:
    """`_num_replicas`, `_all_reduce_sum`, `_all_true`, `_global_losses` and
    `_init_scope` for one replica (a mixin before `MultiTaskStep`)."""

    def _num_replicas(self) -> int:
        return 1

    def _all_reduce_sum(self, value: Any) -> Any:
        return value

    def _all_true(self, flag: Any) -> Any:
        return flag

    def _global_losses(self, local: Any) -> Any:
        return local

    def _init_scope(self) -> contextlib.AbstractContextManager[Any]:
        return contextlib.nullcontext()
