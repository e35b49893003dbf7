"""What a benchmark ran on: CPU, cores, library versions, GPU and its peak memory bandwidth."""

from __future__ import annotations

import datetime
import os
import platform
import resource
import subprocess
from importlib import metadata
from pathlib import Path

import torch

# Peak memory bandwidth in GB/s (10^9 bytes per second) by GPU, from the vendor data sheets.
# First match wins: (every substring that must occur in the device name, GB/s).
PEAK_BANDWIDTH_GBPS: tuple[tuple[tuple[str, ...], float], ...] = (
    (("H200",), 4800.0),
    (("H100", "PCIe"), 2000.0),
    (("H100", "SXM"), 3350.0),
    (("H100", "HBM3"), 3350.0),  # the SXM part reports itself as "NVIDIA H100 80GB HBM3"
)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


BUSY_SHARE = 0.1  # above this share of foreign CPU time a report warns that timings suffered


class ForeignLoad:
    """Share of the machine's CPU time that processes other than this run used meanwhile.

    Started before a run and read after it: busy time of all CPUs (``/proc/stat``) minus the CPU
    time of this process and its finished children, over the CPUs' total time. On a shared
    machine this says how much the numbers were disturbed.
    """

    def __init__(self) -> None:
        self._start = self._snapshot()

    @staticmethod
    def _snapshot() -> tuple[float, float, float] | None:
        try:
            with open("/proc/stat") as stat:
                fields = [int(x) for x in stat.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        ticks = os.sysconf("SC_CLK_TCK")
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        total = sum(fields[:8])  # guest time is already counted in user
        own = sum(
            usage.ru_utime + usage.ru_stime
            for usage in (resource.getrusage(resource.RUSAGE_SELF),
                          resource.getrusage(resource.RUSAGE_CHILDREN))
        )
        return (total - idle) / ticks, total / ticks, own

    def share(self) -> float | None:
        """Fraction (0..1) of all CPU time used by others since construction."""
        end = self._snapshot()
        if self._start is None or end is None or end[1] <= self._start[1]:
            return None
        busy, total, own = (b - a for a, b in zip(self._start, end))
        return min(max((busy - own) / total, 0.0), 1.0)

    def describe(self) -> str:
        share = self.share()
        if share is None:
            return "n/a (no /proc/stat)"
        warning = " (busy machine: the timings are disturbed)" if share > BUSY_SHARE else ""
        return f"{100 * share:.0f} % of all cores{warning}"


def load_average() -> str:
    """The 1, 5 and 15 minute load averages: how busy the machine was around a run."""
    if not hasattr(os, "getloadavg"):
        return "n/a"
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def peak_bandwidth_gbps(device_name: str) -> float | None:
    """The data-sheet peak memory bandwidth of a GPU, or None if it is not in the table."""
    for needles, gbps in PEAK_BANDWIDTH_GBPS:
        if all(needle.lower() in device_name.lower() for needle in needles):
            return gbps
    return None


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"


def _git_revision(root: Path) -> str | None:
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, timeout=10,
        )
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + (" with uncommitted changes" if dirty.stdout.strip() else "")


def describe(
    device: str, command: str, root: Path, threads: int | None = None
) -> list[tuple[str, str]]:
    """(item, value) rows for a report's header."""
    from medtune.kernels import select

    rows = [
        ("command", f"`{command}`"),
        ("date", datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")),
        ("CPU", cpu_model()),
        ("cores usable / torch threads", f"{usable_cores()} / {threads or torch.get_num_threads()}"),
        ("load average at start (1, 5, 15 min)", load_average()),
        ("Python", platform.python_version()),
        ("torch", torch.__version__),
        ("MONAI", _version("monai")),
        ("Triton", _version("triton")),
        ("medtune", f"{_version('medtune')} ({_git_revision(root) or 'no git revision'})"),
        (
            "medtune backends",
            f"glf_stats: {select('glf_stats', device).backend}, "
            f"glf_stats_backward: {select('glf_stats_backward', device).backend}",
        ),
    ]
    if device == "cuda":
        properties = torch.cuda.get_device_properties(0)
        rows.append(("GPU", f"{properties.name}, {properties.total_memory / 2**30:.0f} GiB"))
        rows.append(("CUDA", str(torch.version.cuda)))
    return rows
