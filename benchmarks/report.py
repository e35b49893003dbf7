"""BENCHMARKS.md: the results of a run as markdown, one section per device.

A run renders one section (its machine, then a table per case and mode, then the targets) and
writes it into the output file, replacing the section of the same device and keeping the
others, so CPU and GPU results measured on different machines live side by side. A run of some
cases only (``--cases``) replaces their tables and verdicts in that section and keeps the
others, each marked with the date of the run that measured it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from benchmarks.cases import CASES, FORWARD, FORWARD_BACKWARD, Case
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
  speed would depend on what ran before them). Some cases are timed a second time, in another
  fresh process with glibc's default settings (what a user's new process starts with), in the
  columns marked *glibc defaults*.
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
    default_timing: Timing | None = None  # timed with glibc's default malloc settings


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

    @property
    def has_defaults(self) -> bool:
        """Whether the rows were also timed with glibc's default malloc settings."""
        return all(row.default_timing is not None for row in self.rows)

    def speedup(self, key: str, defaults: bool = False) -> float:
        def median(row: Row) -> float:
            return (row.default_timing if defaults else row.timing).median

        return median(self.row(self.case.peer)) / median(self.row(key))


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
    ]
    if table.has_defaults:
        header += ["median ms, glibc defaults", "speed-up, glibc defaults"]
    header += [
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
        ]
        if table.has_defaults:
            cells += [format_ms(row.default_timing.median),
                      f"{table.speedup(row.key, defaults=True):.2f}×"]
        cells += [
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


def _ratio(value: float) -> str:
    """A speed-up for a verdict: two decimals below 10, so that 0.96 never reads as 1.0."""
    return f"{value:.1f}" if value >= 10 else f"{value:.2f}"


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
            reached = speedup >= case.speedup_target
            defaults = ""
            if table.has_defaults:  # judged on both malloc settings
                with_defaults = table.speedup(case.subject, defaults=True)
                reached = reached and with_defaults >= case.speedup_target
                defaults = f" ({_ratio(with_defaults)}× with glibc's default malloc settings)"
            met = "met" if reached else "**NOT MET**"
            verdicts.append(
                f"- {name}: {subject.label} is {_ratio(speedup)}× faster than "
                f"{table.row(case.peer).label}{defaults}; target ≥ {case.speedup_target:g}×: "
                f"{met}."
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


def render_section(section: Section, previous: str | None = None) -> str:
    """The markdown of one device's results, between markers that identify the device.

    ``previous``: the section this one replaces; the tables and verdicts of cases this run did
    not measure are carried over from it (unless either run is a quick one).
    """
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
    measured = {table.case.name for table in section.tables}
    kept_tables, kept_verdicts = {}, {}
    if previous is not None and not section.quick and "**Quick run**" not in previous:
        kept_tables, kept_verdicts = _earlier_results(previous, measured)
    new_tables = {(table.case.name, table.mode): table for table in section.tables}
    for case in CASES.values():
        for mode in case.modes:
            if (case.name, mode) in new_tables:
                lines += [render_table(new_tables[(case.name, mode)], section), ""]
            elif (case.name, mode) in kept_tables:
                lines += [kept_tables[(case.name, mode)], ""]
    verdicts = _targets(section) + [line for lines in kept_verdicts.values() for line in lines]
    verdicts.sort(key=lambda line: _case_order(line[2:].split(" (", 1)[0]))  # stable
    if verdicts and not section.quick:
        lines += ["### Targets", "", *verdicts, ""]
    lines.append(_end(section.device))
    return "\n".join(lines)


def _case_order(name: str) -> int:
    names = list(CASES)
    return names.index(name) if name in names else len(names)


EARLIER = "*Measured by an earlier run"


def _earlier_results(previous: str, measured: set[str]) -> tuple[dict, dict]:
    """From a previous section: its tables {(case, mode): markdown} and verdict lines {case:
    [lines]} for the cases not in ``measured``, each table marked with its run's date."""
    rows = dict(re.findall(r"^\| (date|CPU|command) \| (.*) \|$", previous, re.MULTILINE))
    run = ", ".join(rows[item] for item in ("date", "CPU", "command") if item in rows)
    note = f"{EARLIER}: {run or 'date unknown'}.*"
    tables, verdicts = {}, {}
    body_of_section = previous.rsplit("\n", 1)[0]  # without the end marker
    for block in re.split(r"^(?=### )", body_of_section, flags=re.MULTILINE)[1:]:
        heading, _, body = block.partition("\n")
        body = body.strip("\n")
        if heading == "### Targets":
            for line in body.splitlines():
                case = line[2:].split(" (", 1)[0]
                if line.startswith("- ") and case in CASES and case not in measured:
                    verdicts.setdefault(case, []).append(line)
            continue
        name, _, mode = heading[4:].rpartition(", ")
        if name not in CASES or name in measured or mode not in CASES[name].modes:
            continue
        if not body.startswith(EARLIER):
            body = f"{note}\n\n{body}"
        tables[(name, mode)] = f"{heading}\n\n{body}"
    return tables, verdicts


def marker(name: str, edge: str) -> str:
    """The ``begin`` or ``end`` marker of BENCHMARKS.md's section ``name``."""
    return f"<!-- benchmarks:{name}:{edge} -->"


def section_pattern(name: str) -> re.Pattern:
    """The section ``name``, markers included, in a BENCHMARKS.md text."""
    return re.compile(re.escape(marker(name, "begin")) + ".*?" + re.escape(marker(name, "end")),
                      re.DOTALL)


def replace_section(previous: str, name: str, section: str, after: tuple[str, ...] = ()) -> str:
    """``previous`` (a BENCHMARKS.md text, maybe empty) with its section ``name`` replaced by
    ``section``, or, without one, ``section`` inserted after the first of the sections ``after``
    that is there, else appended; the rest is kept as it is."""
    found = section_pattern(name).search(previous)
    if found:
        return previous[: found.start()] + section + previous[found.end():]
    for before in after:
        anchor = section_pattern(before).search(previous)
        if anchor:
            return previous[: anchor.end()] + "\n\n" + section + previous[anchor.end():]
    if previous:
        return previous.rstrip("\n") + "\n\n" + section + "\n"
    return "# medtune benchmarks\n\n" + section + "\n"


def _begin(device: str) -> str:
    return marker(device, "begin")


def _end(device: str) -> str:
    return marker(device, "end")


def write(path: Path, section: Section) -> None:
    """Write ``section`` into ``path``, keeping the sections of other devices already there and,
    from this device's, the results of the cases this run did not measure."""
    kept, same = [], None
    if path.exists():
        previous = path.read_text()
        pattern = re.compile(
            r"<!-- benchmarks:(\w+):begin -->.*?<!-- benchmarks:\1:end -->", re.DOTALL
        )
        for m in pattern.finditer(previous):
            if m.group(1) == section.device:
                same = m.group(0)
            else:
                kept.append(m.group(0))
    sections = {section.device: render_section(section, same)}
    for text in kept:
        sections[re.match(r"<!-- benchmarks:(\w+):begin", text).group(1)] = text
    ordered = [sections[d] for d in sorted(sections, key=lambda d: (d != "cpu", d))]
    path.write_text(PREAMBLE + "\n" + "\n\n".join(ordered) + "\n")
