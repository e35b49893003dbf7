"""``python -m benchmarks.scans --quick``: the scans section is rendered between its markers,
after the search section, and the rest of BENCHMARKS.md is kept.

Only the report's structure is checked, never timings: the CI machine is shared and noisy, and
a quick run's data is tiny.
"""

from __future__ import annotations

import re

from benchmarks import scans

CPU_SECTION = "<!-- benchmarks:cpu:begin -->\n## CPU\nkept as is\n<!-- benchmarks:cpu:end -->"
SEARCH_SECTION = "<!-- benchmarks:search:begin -->\n## Search\nkept\n<!-- benchmarks:search:end -->"
TAIL = "## Notes\n\nkept too\n"


def test_quick_run_writes_the_scans_section_after_search(tmp_path, capsys):
    output = tmp_path / "BENCHMARKS.md"
    output.write_text(f"# medtune benchmarks\n\n{CPU_SECTION}\n\n{SEARCH_SECTION}\n\n{TAIL}")
    assert scans.main(["--quick", "--output", str(output)]) == 0
    text = output.read_text()
    assert text.startswith(f"# medtune benchmarks\n\n{CPU_SECTION}\n\n{SEARCH_SECTION}\n\n")
    assert text.endswith(TAIL)
    begin, end = "<!-- benchmarks:scans:begin -->", "<!-- benchmarks:scans:end -->"
    assert text.count(begin) == 1 and text.count(end) == 1
    section = text[text.index(begin):text.index(end) + len(end)]
    assert text.index(SEARCH_SECTION) < text.index(section)
    assert "**Quick run**" in section and "| cores usable / torch threads | " in section
    for side in ("MONAI Dataset, DiceCE", "MONAI CacheDataset, DiceCE", "medtune, dice_ce",
                 "medtune, dice + CE (fused)"):
        row = re.search(rf"^\| {re.escape(side)} \| (\d+\.\d+) \| (\d+\.\d) % \| (\d+\.\d+)× "
                        rf"\| (\d+\.\d+)× \|$", section, re.MULTILINE)
        assert row is not None, side
    targets = section[section.index("### Targets"):]
    assert len(re.findall(r"^- ", targets, re.MULTILINE)) == 5
    assert all(re.search(r"\*\*(met|not met)\*\*", line)
               for line in targets.splitlines() if line.startswith("- "))
    assert "CUDA pending" in targets
    assert "python -m benchmarks.scans --quick --output" in section
    assert section in capsys.readouterr().out


def test_write_replaces_the_section_in_place(tmp_path):
    output = tmp_path / "BENCHMARKS.md"
    old = "<!-- benchmarks:scans:begin -->\nold\n<!-- benchmarks:scans:end -->"
    new = "<!-- benchmarks:scans:begin -->\nnew\n<!-- benchmarks:scans:end -->"
    output.write_text(f"{CPU_SECTION}\n\n{old}\n\n{SEARCH_SECTION}\n")
    scans.write(output, new)
    assert output.read_text() == f"{CPU_SECTION}\n\n{new}\n\n{SEARCH_SECTION}\n"
    fresh = tmp_path / "new.md"
    scans.write(fresh, new)
    assert fresh.read_text() == f"# medtune benchmarks\n\n{new}\n"
