"""`keras_mtl.raise_malloc_limits`: glibc keeps a large freed block in its
heap, so the next one of the same size touches no fresh page.

The behaviour is measured in child processes (`malloc_block_worker.py`: the
limits hold for a whole process, and a thread's heap is chosen once): a
block allocated, filled and freed a few times, its page faults counted
round by round. The calls to `mallopt` itself are checked in-process with a
recorder in its place, so the test run's own allocator is left alone.
"""

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import keras
import pytest

from keras_mtl import malloc_limits, raise_malloc_limits

WORKER = str(Path(__file__).with_name("malloc_block_worker.py"))
GLIBC = malloc_limits._glibc_mallopt() is not None
_MiB = 2**20


def _faults(mib: int, where: str, limits: dict | None) -> dict:
    command = [sys.executable, WORKER, str(mib), where]
    if limits is not None:
        command.append(json.dumps(limits))
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


# (block MiB, the thread that allocates it, the limits, whether every round
# maps the block afresh). 48 MiB is above glibc's largest automatic mmap
# threshold (32 MiB); 96 MiB is above the 64 MiB bound of a thread's own
# heap, so from a thread the mmap threshold alone does not keep it.
BLOCKS = [
    (48, "main", None, True),
    (48, "main", {}, False),
    (48, "main", {"single_arena": False}, False),
    (96, "thread", None, True),
    (96, "thread", {"single_arena": False}, True),
    (96, "thread", {}, False),
]


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc only")
@pytest.mark.parametrize("mib,where,limits,afresh", BLOCKS)
def test_a_freed_block_is_kept_in_the_heap(mib, where, limits, afresh):
    record = _faults(mib, where, limits)
    first, *later = record["faults"]
    # The first round faults in the block's pages (one a page, fewer with
    # huge pages); afterwards either every round does so again or none
    # (a few faults of the interpreter's own at most).
    assert first >= record["pages"] // 512, record
    for faults in later:
        if afresh:
            assert faults >= first // 2, record
        else:
            assert faults <= first // 100, record


class _Recorder:
    def __init__(self, refuse: tuple[int, ...] = ()) -> None:
        self.calls: list[tuple[int, int]] = []
        self.refuse = refuse

    def __call__(self, param: int, value: int) -> int:
        self.calls.append((param, value))
        return 0 if param in self.refuse else 1


@pytest.fixture
def recorder(monkeypatch) -> _Recorder:
    recorder = _Recorder()
    monkeypatch.setattr(malloc_limits, "_glibc_mallopt", lambda: recorder)
    monkeypatch.setattr(malloc_limits, "_jax_has_started", lambda: False)
    return recorder


# glibc's malloc.h: M_TRIM_THRESHOLD -1, M_MMAP_THRESHOLD -3, M_ARENA_MAX -8.
def test_one_arena_first_then_the_thresholds(recorder):
    assert raise_malloc_limits() is True
    assert recorder.calls == [(-8, 1), (-3, 256 * _MiB), (-1, 512 * _MiB)]


def test_thresholds_of_ones_own_and_the_arenas_left_alone(recorder):
    assert raise_malloc_limits(100 * _MiB, 0, single_arena=False) is True
    assert recorder.calls == [(-3, 100 * _MiB), (-1, 0)]


def test_a_refused_setting_is_named_and_the_call_says_false(recorder):
    recorder.refuse = (-3,)
    with pytest.warns(UserWarning, match="refused mmap_threshold=268435456"):
        assert raise_malloc_limits() is False
    assert [param for param, _ in recorder.calls] == [-8, -3, -1]
    recorder.refuse = (-8,)
    with pytest.warns(UserWarning, match=r"refused single_arena=1; the other") as got:
        assert raise_malloc_limits() is False
    assert "32 MiB" not in str(got[0].message)


def test_after_jax_started_a_warning_says_what_is_lost(recorder, monkeypatch):
    monkeypatch.setattr(malloc_limits, "_jax_has_started", lambda: True)
    with pytest.warns(UserWarning, match="after JAX started"):
        assert raise_malloc_limits() is True
    # Without the single arena there is nothing to lose: no warning.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert raise_malloc_limits(single_arena=False) is True


@pytest.mark.backend_neutral
@pytest.mark.skipif(keras.backend.backend() != "jax", reason="JAX's backends")
def test_jax_started_is_seen():
    keras.ops.convert_to_tensor([1.0])
    assert malloc_limits._jax_has_started()


def test_importing_keras_mtl_starts_no_jax_backend():
    """So `raise_malloc_limits()` right after `import keras_mtl` comes before
    XLA's threads (the documented place to call it)."""
    code = (
        "import keras_mtl\n"
        "from keras_mtl import malloc_limits\n"
        "assert not malloc_limits._jax_has_started()\n"
        "import keras\n"
        "keras.ops.convert_to_tensor([1.0])\n"
        "assert malloc_limits._jax_has_started()\n"
    )
    env = {**os.environ, "KERAS_BACKEND": "jax", "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.parametrize(
    "platform,confstr", [("darwin", None), ("win32", None), ("linux", "musl")]
)
def test_another_c_library_changes_nothing(monkeypatch, platform, confstr):
    monkeypatch.setattr(sys, "platform", platform)

    def no_glibc(name):
        raise ValueError(f"unrecognized configuration name {name!r}")

    if confstr == "musl":
        monkeypatch.setattr(os, "confstr", no_glibc)
    assert malloc_limits._glibc_mallopt() is None
    monkeypatch.setattr(malloc_limits, "_glibc_mallopt", lambda: None)
    assert raise_malloc_limits() is False


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"mmap_threshold": 0}, ValueError, "mmap_threshold must be between 1"),
        ({"mmap_threshold": 2**31}, ValueError, "mmap_threshold .* got 2147483648"),
        ({"trim_threshold": -1}, ValueError, "trim_threshold must be between 0"),
        ({"mmap_threshold": 1.5e8}, TypeError, "mmap_threshold must be an int"),
        ({"trim_threshold": True}, TypeError, "trim_threshold must be an int"),
    ],
)
def test_bad_thresholds_name_the_argument(recorder, kwargs, error, match):
    with pytest.raises(error, match=match):
        raise_malloc_limits(**kwargs)
    assert recorder.calls == []
