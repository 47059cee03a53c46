"""Deterministic measures of work for complexity tests: operations counted by the tracing hooks, peak
memory by tracemalloc; CPU time only as a loose secondary figure."""

from __future__ import annotations

import sys
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import Any


@dataclass(frozen=True)
class Work:
    operations: int  # Python bytecodes executed + calls into C functions: the same on every run
    seconds: float  # best of three untraced runs (process time), noisy


def count_work(fn: Callable[[], object]) -> Work:
    """Run ``fn`` traced, counting bytecodes and C calls, then three times untraced for CPU time.

    Work done inside one C call (a regex match, str.count) counts once whatever its size: the CPU time
    is what catches a C call that grows super-linearly.
    """
    operations = 0

    def trace(frame: FrameType, event: str, arg: Any) -> Any:
        nonlocal operations
        frame.f_trace_opcodes = True
        operations += 1
        return trace

    def profile(frame: FrameType, event: str, arg: Any) -> None:
        nonlocal operations
        if event == "c_call":
            operations += 1

    old_trace, old_profile = sys.gettrace(), sys.getprofile()
    sys.setprofile(profile)
    sys.settrace(trace)
    try:
        fn()
    finally:
        sys.settrace(old_trace)
        sys.setprofile(old_profile)
    best = float("inf")
    for _ in range(3):
        start = time.process_time()
        fn()
        best = min(best, time.process_time() - start)
    return Work(operations, best)


def peak_memory(fn: Callable[[], object]) -> int:
    """Bytes allocated by ``fn`` at its peak, beyond what was allocated when it started (tracemalloc)."""
    was_tracing = tracemalloc.is_tracing()
    if not was_tracing:
        tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        baseline = tracemalloc.get_traced_memory()[0]
        fn()
        return tracemalloc.get_traced_memory()[1] - baseline
    finally:
        if not was_tracing:
            tracemalloc.stop()
