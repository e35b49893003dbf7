"""The benchmark command line: run the cases, print the tables, write BENCHMARKS.md.

``main(argv)`` is what ``python -m benchmarks`` and ``medtune bench`` call. A default run
measures every case at full size on the CPU and rewrites the CPU section of BENCHMARKS.md at
the repository root; ``--quick`` (small shapes, few samples, for smoke tests) only prints,
unless ``--output`` names a file.
"""

from __future__ import annotations

import argparse
import difflib
import shlex
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from benchmarks import machine, report, worker
from benchmarks.cases import CASES, GROUPS, Case
from benchmarks.memory import MemoryResult
from benchmarks.timing import Timing

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = ROOT / "BENCHMARKS.md"
FULL = {"warmup": 3, "repetitions": 15}
QUICK = {"warmup": 1, "repetitions": 3}


def _parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Measure medtune's kernels against their peers (MONAI, the PyTorch "
        "references) and write BENCHMARKS.md.",
    )
    parser.add_argument(
        "--quick", action="store_true",
        help="small shapes and few samples (a smoke test, about a minute); writes a file only "
        "with --output",
    )
    parser.add_argument(
        "--output", type=Path, default=None,
        help=f"markdown file to write (default: {DEFAULT_OUTPUT.name} at the repository root, "
        "except with --quick); only this device's section is replaced",
    )
    parser.add_argument(
        "--cases", default=",".join(CASES),
        help=f"comma-separated cases or groups ({', '.join(GROUPS)}) to run (default: all of "
        f"{', '.join(CASES)})",
    )
    parser.add_argument(
        "--device", choices=("cpu", "cuda"), default="cpu",
        help="where to run (default: cpu); cuda needs a GPU",
    )
    parser.add_argument(
        "--peak-bandwidth", type=float, default=None, metavar="GBPS",
        help="the GPU's peak memory bandwidth in GB/s (default: looked up from the device name)",
    )
    parser.add_argument(
        "--threads", type=int, default=None,
        help="torch (and OpenMP) threads in the measuring processes (default: torch's choice)",
    )
    parser.add_argument("--repetitions", type=int, default=None, help="samples per implementation")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up calls per implementation")
    return parser


def _chosen_cases(parser: argparse.ArgumentParser, text: str) -> list[Case]:
    chosen = []
    for name in (part.strip() for part in text.split(",")):
        if not name:
            continue
        if name in GROUPS:
            chosen.extend(CASES[member] for member in GROUPS[name])
            continue
        if name not in CASES:
            close = difflib.get_close_matches(name, list(CASES), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            parser.error(f"unknown case {name!r}: the cases are {', '.join(CASES)}{hint}")
        chosen.append(CASES[name])
    if not chosen:
        parser.error("--cases names no case")
    return chosen


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_table(
    case: Case, mode: str, device: str, quick: bool, threads: int | None, settings: dict
) -> report.Table:
    """Check, time and measure every implementation of ``case`` in ``mode``, each part in a
    fresh process (see ``benchmarks.worker``)."""
    request = {
        "case": case.name, "mode": mode, "device": device, "quick": quick, "threads": threads
    }
    _progress(
        f"{case.name} ({mode}): checking {len(case.implementations)} implementations against "
        f"the peer, then {settings['repetitions']} samples each"
    )
    timed = worker.run(dict(request, task="time", **settings), worker.TIMING_MALLOC)
    defaults = None
    if case.malloc_defaults:
        _progress(f"{case.name} ({mode}): timed again with glibc's default malloc settings")
        defaults = worker.run(dict(request, task="time", **settings), worker.DEFAULT_MALLOC)
    labels = {
        impl.key: impl.label.format(backend=timed["backend"]) for impl in case.implementations
    }

    _progress(f"{case.name} ({mode}): peak extra memory of each implementation")
    peaks = _peak_memory(request, list(labels), device)

    def timing(answer: dict | None, key: str) -> Timing | None:
        if answer is None:
            return None
        return Timing(tuple(answer["timings"][key]["samples_ms"]), answer["timings"][key]["calls"])

    rows = tuple(
        report.Row(
            key=key,
            label=labels[key],
            timing=timing(timed, key),
            memory=peaks[key],
            relative_difference=timed["differences"][key],
            default_timing=timing(defaults, key),
        )
        for key in labels
    )
    return report.Table(
        case=case,
        mode=mode,
        inputs=timed["inputs"],
        pred_bytes=timed["pred_bytes"],
        moved_bytes=timed["moved_bytes"],
        rows=rows,
    )


def _peak_memory(request: dict, keys: list[str], device: str) -> dict[str, MemoryResult]:
    """One fresh process per implementation; on the CPU side by side (one per core), which
    changes the wall time, not the numbers; on a GPU one after the other."""

    def measure(key: str) -> MemoryResult:
        answer = worker.run(dict(request, task="memory", impl=key), worker.MEMORY_MALLOC)
        return MemoryResult(answer.get("extra_bytes"), answer.get("problem"))

    workers = 1 if device == "cuda" else max(1, min(len(keys), machine.usable_cores()))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return dict(zip(keys, pool.map(measure, keys)))


def _peak_bandwidth(device: str, given: float | None) -> tuple[float | None, str | None]:
    if device != "cuda":
        return None, None
    if given is not None:
        return given, f"{given:.0f} GB/s (given by --peak-bandwidth)"
    name = torch.cuda.get_device_name(0)
    found = machine.peak_bandwidth_gbps(name)
    if found is None:
        return None, f"unknown for {name}: pass --peak-bandwidth GBPS"
    return found, f"{found:.0f} GB/s (data sheet for {name})"


def main(argv: list[str] | None = None, prog: str = "python -m benchmarks") -> int:
    """Run the benchmarks; returns the exit status."""
    parser = _parser(prog)
    arguments = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(arguments)
    cases = _chosen_cases(parser, args.cases)
    if args.peak_bandwidth is not None and args.device != "cuda":
        parser.error("--peak-bandwidth only applies with --device cuda")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available to torch here; use --device cpu")
    settings = dict(QUICK if args.quick else FULL)
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be at least 1")
    for name in ("repetitions", "warmup"):
        value = getattr(args, name)
        if value is not None:
            if value < (1 if name == "repetitions" else 0):
                parser.error(f"--{name} must be at least {1 if name == 'repetitions' else 0}")
            settings[name] = value

    command = " ".join([prog, *map(shlex.quote, arguments)])
    machine_rows = machine.describe(args.device, command, ROOT, args.threads)
    peak_gbps, peak_text = _peak_bandwidth(args.device, args.peak_bandwidth)
    if peak_text:
        machine_rows.append(("peak memory bandwidth", peak_text))

    foreign = machine.ForeignLoad()
    try:
        tables = [
            run_table(case, mode, args.device, args.quick, args.threads, settings)
            for case in cases
            for mode in case.modes
        ]
    except worker.WorkerError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 1
    machine_rows.append(("load average at end (1, 5, 15 min)", machine.load_average()))
    machine_rows.append(("CPU time used by other processes during the run", foreign.describe()))
    section = report.Section(args.device, machine_rows, tables, args.quick, peak_gbps)
    print(report.render_section(section))
    output = args.output if args.output is not None else (None if args.quick else DEFAULT_OUTPUT)
    if output is not None:
        report.write(output, section)
        _progress(f"wrote {output}")
    else:
        _progress("quick run: nothing written (pass --output PATH to keep the report)")
    return 0
