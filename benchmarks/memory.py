"""Peak extra memory of one call, measured in the (fresh) process that makes the call.

CPU: two warm-up calls (lazy imports, the C++ extension, thread pools), their outputs and
gradient dropped, then the kernel's RSS high-water mark is reset (``5 > /proc/self/clear_refs``),
VmRSS read, one call made and VmHWM read: extra = VmHWM - VmRSS. That counts every page the
call touches, tensors or not. The worker runs this with glibc returning every freed buffer of
128 KiB or more to the OS, so memory freed earlier cannot hide new allocations.

CUDA: ``torch.cuda.max_memory_allocated()`` during one call minus
``torch.cuda.memory_allocated()`` before it, after the same warm-up.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass

import torch

from benchmarks.cases import Step

CPU_METHOD = (
    "fresh process per implementation, glibc MALLOC_MMAP_THRESHOLD_=131072; after two warm-up "
    "calls the RSS high-water mark is reset (/proc/self/clear_refs) and extra = VmHWM after one "
    "call - VmRSS before it"
)
CUDA_METHOD = (
    "fresh process per implementation; torch.cuda.max_memory_allocated() during one call - "
    "memory_allocated() before it"
)


# The kernel keeps RSS in per-CPU counters; the reset and the reads can disagree by some
# pages (up to 32 per CPU), so the high-water mark may read a little above VmRSS right after a
# reset. More than this means the reset did not happen.
RSS_TOLERANCE_KIB = 1024


class MemoryMeasurementError(RuntimeError):
    """This platform cannot measure what the report needs."""


@dataclass(frozen=True)
class MemoryResult:
    """Peak extra bytes of one call, or why they could not be measured."""

    extra_bytes: int | None
    problem: str | None = None


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise MemoryMeasurementError(f"/proc/self/status has no {field} line")


def _reset_high_water_mark() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
    except OSError as exc:
        raise MemoryMeasurementError(f"cannot reset the RSS high-water mark ({exc})") from exc


def peak_extra_bytes(step: Step, device: str) -> int:
    """Bytes one call of ``step`` needs on top of what is allocated before it."""
    step()
    step()
    # Without this the call would free the warm-up's gradient before making its own, and the
    # new gradient would not show in the high-water mark.
    step.clear()
    gc.collect()
    if device == "cuda":
        torch.cuda.synchronize()
        baseline = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        return max(torch.cuda.max_memory_allocated() - baseline, 0)
    _reset_high_water_mark()
    before_kib = _status_kib("VmRSS")
    if _status_kib("VmHWM") > before_kib + RSS_TOLERANCE_KIB:
        raise MemoryMeasurementError("the RSS high-water mark did not reset")
    held = step()  # outputs stay mapped until VmHWM is read
    peak_kib = _status_kib("VmHWM")
    del held
    # The kernel's RSS counters are per-CPU approximations: never report less than nothing.
    return max(peak_kib - before_kib, 0) * 1024
