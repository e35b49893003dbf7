"""BENCHMARKS.md: the results of a run as markdown, one section per device.

A run renders one section (its machine, then a table per case and mode, then the targets) and
writes it into the output file, replacing the section of the same device and keeping the
others, so CPU and GPU results measured on different machines live side by side.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from benchmarks.cases import FORWARD, FORWARD_BACKWARD, Case
from benchmarks.memory import CPU_METHOD, CUDA_METHOD, MemoryResult
from benchmarks.timing import Timing

MiB = 2**20
DISAGREEMENT = 1e-3  # relative difference from the peer above which a row is flagged

PREAMBLE = """\
# medtune benchmarks

Written by the benchmark runner (`python -m benchmarks` from the repository root, or
`medtune bench`); rerun it instead of editing this file. Each device has its own section; a run
replaces only the section of the device it ran on.

How the numbers are taken:

- **Time**: each table is measured in a fresh process. Every implementation first gets
  warm-up calls, then a number of samples; the implementations are interleaved round-robin
  (order rotated each round), so noise from other processes hits all of them alike. A sample is
  the mean of `calls` back-to-back calls (1 unless a call is shorter than 10 ms). Median,
  inter-quartile range (IQR) and minimum over the samples, in milliseconds per call. A
  forward+backward call is a training step: drop the previous gradient, compute the loss,
  reduce it to a scalar (mean), back-propagate into the prediction. The inputs stay the same
  from call to call, so on the CPU they may stay in the last-level cache. The timing process
  runs with glibc's `MALLOC_MMAP_THRESHOLD_=32 MiB` and `MALLOC_TRIM_THRESHOLD_=64 MiB`, the
  values glibc adopts by itself in a training process once a large tensor has been freed:
  temporaries are reused instead of page-faulted afresh on every call (otherwise the peers'
  speed would depend on what ran before them).
- **Speed-up**: the peer's median / this implementation's median, both from the same process.
- **Peak extra memory** on the CPU: each implementation runs alone in a fresh process with
  glibc's `MALLOC_MMAP_THRESHOLD_=131072`, so freed buffers go back to the OS; after two warm-up
  calls the RSS high-water mark is reset (`5 > /proc/self/clear_refs`) and the extra memory is
  VmHWM after one call minus VmRSS before it (good to a few hundred KiB: the kernel keeps RSS
  in per-CPU counters). It counts every page the call touches, tensors or not, and includes
  the gradient that backward returns (1× input). On a GPU:
  `torch.cuda.max_memory_allocated()` during one call minus `memory_allocated()` before it.
  **× input** divides by the size of the prediction tensor.
- **max rel. diff**: before timing, every implementation's output (and gradient) is compared
  with the peer's: largest absolute difference / largest absolute value of the peer's. Rows
  above 1e-3 are flagged.
- **Bandwidth** (GPU only): the bytes a fused implementation must move (forward: read
  prediction and target; forward+backward: read both twice and write the gradient) divided by
  the median time, and as a percentage of the device's peak.
"""


@dataclass(frozen=True)
class Row:
    """One implementation's measurements in one table."""

    key: str
    label: str
    timing: Timing
    memory: MemoryResult
    relative_difference: float | None  # None for the peer itself


@dataclass(frozen=True)
class Table:
    """One case in one mode."""

    case: Case
    mode: str
    inputs: str
    pred_bytes: int
    moved_bytes: int
    rows: tuple[Row, ...]

    def row(self, key: str) -> Row:
        return next(row for row in self.rows if row.key == key)

    def speedup(self, key: str) -> float:
        return self.row(self.case.peer).timing.median / self.row(key).timing.median


@dataclass(frozen=True)
class Section:
    """Everything one run measured on one device."""

    device: str
    machine: list[tuple[str, str]]
    tables: list[Table]
    quick: bool
    peak_gbps: float | None


def format_ms(value: float) -> str:
    """A time in milliseconds with about three significant digits."""
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    if value >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def _memory(memory: MemoryResult, pred_bytes: int) -> tuple[str, str]:
    if memory.extra_bytes is None:
        return f"n/a ({memory.problem})", ""
    return f"{memory.extra_bytes / MiB:.1f}", f"{memory.extra_bytes / pred_bytes:.2f}×"


def _difference(value: float | None) -> str:
    if value is None:
        return "(peer)"
    flag = " **DISAGREES**" if value > DISAGREEMENT else ""
    return f"{value:.1e}{flag}"


def render_table(table: Table, section: Section) -> str:
    case = table.case
    peer = table.row(case.peer)
    cuda = section.device == "cuda"
    header = [
        "implementation",
        "median ms",
        "IQR ms",
        "min ms",
        "samples × calls",
        "speed-up vs peer",
        "peak extra MiB",
        "× input",
        "max rel. diff",
    ]
    if cuda:
        header += ["GB/s", "% of peak"]
    lines = [
        f"### {case.name}, {table.mode}",
        "",
        f"{case.title}. Inputs: {table.inputs} (prediction {table.pred_bytes / MiB:.1f} MiB). "
        f"Peer: {peer.label}.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|",
    ]
    for row in table.rows:
        megabytes, multiple = _memory(row.memory, table.pred_bytes)
        cells = [
            row.label,
            format_ms(row.timing.median),
            format_ms(row.timing.iqr),
            format_ms(min(row.timing.samples_ms)),
            f"{len(row.timing.samples_ms)} × {row.timing.calls}",
            f"{table.speedup(row.key):.2f}×",
            megabytes,
            multiple,
            _difference(row.relative_difference),
        ]
        if cuda:
            gbps = table.moved_bytes / (row.timing.median * 1e-3) / 1e9
            cells.append(f"{gbps:.0f}")
            cells.append(f"{100 * gbps / section.peak_gbps:.0f} %" if section.peak_gbps else "n/a")
        lines.append("| " + " | ".join(cells) + " |")
    if cuda:
        lines += ["", f"Bytes a fused implementation must move: {table.moved_bytes / MiB:.1f} MiB."]
    return "\n".join(lines)


def _targets(section: Section) -> list[str]:
    """One line per target the issues set, judged on this run's numbers."""
    verdicts = []
    for table in section.tables:
        case = table.case
        subject = table.row(case.subject)
        name = f"{case.name} ({table.mode})"
        # a speed-up target is judged on the case's training mode, forward+backward, where it
        # has one, and on its forward pass otherwise
        judged_mode = FORWARD_BACKWARD if FORWARD_BACKWARD in case.modes else FORWARD
        if case.speedup_target and section.device == "cpu" and table.mode == judged_mode:
            speedup = table.speedup(case.subject)
            met = "met" if speedup >= case.speedup_target else "**NOT MET**"
            verdicts.append(
                f"- {name}: {subject.label} is {speedup:.1f}× faster than "
                f"{table.row(case.peer).label}; target ≥ {case.speedup_target:g}×: {met}."
            )
        memory = subject.memory
        if case.memory_target is not None and memory.extra_bytes is not None:
            total = memory.extra_bytes / table.pred_bytes
            beyond_gradient = total - (1.0 if table.mode == FORWARD_BACKWARD else 0.0)
            met = "met" if beyond_gradient <= case.memory_target else "**NOT MET**"
            verdicts.append(
                f"- {name}: {subject.label} peak extra memory is {total:.2f}× input, "
                f"{beyond_gradient:.2f}× besides the returned gradient; target ≤ "
                f"{case.memory_target:g} input-sized tensor besides the gradient: {met}."
            )
        if case.bandwidth_target and section.device == "cuda":
            if section.peak_gbps is None:
                verdicts.append(
                    f"- {name}: bandwidth target not judged: peak bandwidth of this GPU unknown "
                    "(pass --peak-bandwidth)."
                )
                continue
            gbps = table.moved_bytes / (subject.timing.median * 1e-3) / 1e9
            fraction = gbps / section.peak_gbps
            met = "met" if fraction >= case.bandwidth_target else "**NOT MET**"
            verdicts.append(
                f"- {name}: {subject.label} moves {gbps:.0f} GB/s = {100 * fraction:.0f} % of "
                f"the peak {section.peak_gbps:.0f} GB/s; target ≥ "
                f"{100 * case.bandwidth_target:.0f} %: {met}."
            )
    return verdicts


def render_section(section: Section) -> str:
    """The markdown of one device's results, between markers that identify the device."""
    title = "CPU" if section.device == "cpu" else "GPU (CUDA)"
    lines = [_begin(section.device), f"## {title}", ""]
    if section.quick:
        lines += [
            "**Quick run** (`--quick`): small shapes and few samples, for smoke tests; the "
            "numbers say nothing about the targets.",
            "",
        ]
    memory_method = CUDA_METHOD if section.device == "cuda" else CPU_METHOD
    lines += ["| | |", "|---|---|"]
    lines += [f"| {item} | {value} |" for item, value in section.machine]
    lines += [f"| peak extra memory | {memory_method} |", ""]
    for table in section.tables:
        lines += [render_table(table, section), ""]
    verdicts = _targets(section)
    if verdicts and not section.quick:
        lines += ["### Targets", "", *verdicts, ""]
    lines.append(_end(section.device))
    return "\n".join(lines)


def _begin(device: str) -> str:
    return f"<!-- benchmarks:{device}:begin -->"


def _end(device: str) -> str:
    return f"<!-- benchmarks:{device}:end -->"


def write(path: Path, section: Section) -> None:
    """Write ``section`` into ``path``, keeping the sections of other devices already there."""
    kept = []
    if path.exists():
        previous = path.read_text()
        pattern = re.compile(
            r"<!-- benchmarks:(\w+):begin -->.*?<!-- benchmarks:\1:end -->", re.DOTALL
        )
        kept = [m.group(0) for m in pattern.finditer(previous) if m.group(1) != section.device]
    sections = {section.device: render_section(section)}
    for text in kept:
        sections[re.match(r"<!-- benchmarks:(\w+):begin", text).group(1)] = text
    ordered = [sections[d] for d in sorted(sections, key=lambda d: (d != "cpu", d))]
    path.write_text(PREAMBLE + "\n" + "\n\n".join(ordered) + "\n")
