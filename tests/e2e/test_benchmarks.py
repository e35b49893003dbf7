"""The benchmark runner end to end: ``python -m benchmarks --quick`` on small shapes.

Only the report's structure is checked (tables, medians, ratios, memory, agreement), never
timings: the CI machine is shared and noisy.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NUMBER = r"\d+(?:\.\d+)?"


def _benchmarks(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "benchmarks", *args],
        cwd=cwd, capture_output=True, text=True, timeout=600,
    )


def _table_rows(markdown: str, heading: str) -> list[list[str]]:
    """The body rows of the table under ``### heading``, as lists of cells."""
    section = markdown.split(f"### {heading}\n", 1)[1].split("\n### ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("| ")]
    header, *body = lines
    assert "median ms" in header and "speed-up vs peer" in header, header
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in body]


GPU_SECTION = "<!-- benchmarks:cuda:begin -->\n## GPU (CUDA)\nkept\n<!-- benchmarks:cuda:end -->"


def test_quick_run_writes_its_tables(tmp_path):
    output = tmp_path / "B.md"
    # A section from another device, as a GPU run would have left it: it must survive.
    output.write_text("# medtune benchmarks\n\n" + GPU_SECTION + "\n")
    # the loss cases only: the whole quick run takes minutes, longer on a busy machine
    result = _benchmarks("--quick", "--cases", "glf_stats,glf_loss_sigmoid,glf_loss_softmax",
                         "--output", str(output))
    assert result.returncode == 0, result.stderr
    markdown = output.read_text()

    assert markdown.startswith("# medtune benchmarks")
    assert markdown.count("# medtune benchmarks") == 1
    assert GPU_SECTION in markdown
    assert markdown.index("benchmarks:cpu:begin") < markdown.index("benchmarks:cuda:begin")
    assert "<!-- benchmarks:cpu:begin -->" in markdown and "<!-- benchmarks:cpu:end -->" in markdown
    for item in ("| command | `python -m benchmarks --quick --cases", "| CPU |", "| torch |",
                 "cores usable / torch threads", "| date |", "Quick run"):
        assert item in markdown, item

    headings = ["glf_stats, forward", "glf_stats, forward+backward",
                "glf_loss_sigmoid, forward+backward", "glf_loss_softmax, forward+backward"]
    for heading in headings:
        rows = _table_rows(markdown, heading)
        labels = [row[0] for row in rows]
        assert any(label.startswith("medtune") for label in labels), labels
        expected = 2 if heading.startswith("glf_stats") else 3
        assert len(rows) == expected, rows
        for label, median, iqr, fastest, samples, speedup, extra_mib, multiple, difference in rows:
            assert re.fullmatch(NUMBER, median) and float(median) > 0, (label, median)
            assert re.fullmatch(NUMBER, iqr), (label, iqr)
            assert re.fullmatch(NUMBER, fastest) and float(fastest) <= float(median), (label, fastest)
            assert re.fullmatch(r"3 × \d+", samples), (label, samples)
            assert re.fullmatch(NUMBER + "×", speedup), (label, speedup)
            assert re.fullmatch(NUMBER, extra_mib), (label, extra_mib)
            assert re.fullmatch(NUMBER + "×", multiple), (label, multiple)
            assert difference == "(peer)" or "DISAGREES" not in difference, (label, difference)
        # The peer's ratio to itself is 1.
        peer_rows = [row for row in rows if row[-1] == "(peer)"]
        assert len(peer_rows) == 1 and peer_rows[0][5] == "1.00×", rows
    assert "MONAI TverskyLoss" in markdown
    # The tables are printed too.
    assert "### glf_loss_softmax, forward+backward" in result.stdout


def test_quick_run_without_output_writes_nothing(tmp_path):
    # Run a copy of the package, so a wrongly written BENCHMARKS.md would land in tmp_path
    # instead of overwriting the repository's.
    shutil.copytree(ROOT / "benchmarks", tmp_path / "benchmarks",
                    ignore=shutil.ignore_patterns("__pycache__"))
    result = _benchmarks("--quick", "--cases", "glf_stats", "--repetitions", "2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "BENCHMARKS.md").exists()
    assert "### glf_stats, forward" in result.stdout
    assert "glf_loss_sigmoid" not in result.stdout


def test_unknown_case_is_refused_with_a_suggestion():
    result = _benchmarks("--quick", "--cases", "glf_loss_sigmod")
    assert result.returncode == 2
    assert "unknown case 'glf_loss_sigmod'" in result.stderr
    assert "did you mean 'glf_loss_sigmoid'" in result.stderr


def _timed_row(key: str, label: str, median_ms: float):
    from benchmarks.memory import MemoryResult
    from benchmarks.report import Row
    from benchmarks.timing import Timing

    return Row(key, label, Timing((median_ms,) * 3, 1), MemoryResult(0), None)


def test_speed_up_targets_are_judged_on_forward_only_cases_too():
    """chol_append and nas_ranking are measured forward only; their targets must still be
    judged (on that mode), as forward+backward cases are judged on forward+backward."""
    from benchmarks.cases import CASES, FORWARD
    from benchmarks.report import Section, Table, _targets

    case = CASES["chol_append_4000"]
    assert case.speedup_target == 100.0 and case.modes == (FORWARD,)

    def section(append_ms: float) -> Section:
        rows = (
            _timed_row("append", "append", append_ms),
            _timed_row("refactor", "refactor", 350.0),
        )
        table = Table(case, FORWARD, "inputs", 8, 8, rows)
        return Section("cpu", [], [table], quick=False, peak_gbps=None)

    (met,) = [line for line in _targets(section(3.0)) if "faster" in line]
    assert "116.7× faster than refactor; target ≥ 100×: met." in met
    (missed,) = [line for line in _targets(section(5.0)) if "faster" in line]
    assert "70.0× faster" in missed and "**NOT MET**" in missed
