"""Loaded by every Python process of a ``scripts/test --shift`` run (PYTHONPATH).

libfaketime 0.9.10 shifts the wall clock for the tests and every program they start;
with ``FAKETIME_DONT_FAKE_MONOTONIC`` it leaves monotonic time alone (thread waits and
timeouts stay real), but its ``clock_nanosleep`` wrapper then refuses Python's absolute
monotonic sleeps with EINVAL. ``time.sleep`` becomes a relative ``select`` here, which
libfaketime leaves alone. Nothing happens without libfaketime in ``LD_PRELOAD``.
"""

import os

if "faketime" in os.environ.get("LD_PRELOAD", ""):
    import select
    import time

    def _sleep(seconds: float) -> None:
        if seconds < 0:
            raise ValueError("sleep length must be non-negative")
        select.select([], [], [], seconds)

    time.sleep = _sleep
