"""``python -m benchmarks.scans --quick``: the scans section is rendered between its markers,
after the search section, and the rest of BENCHMARKS.md is kept; the CUDA section (``--device
cuda``) has markers of its own, each device's run keeps the other's section, and without CUDA
``--device cuda`` exits with status 2 and one line.

Only the report's structure is checked, never timings: the CI machine is shared and noisy, and
a quick run's data is tiny.
"""

from __future__ import annotations

import re
from types import SimpleNamespace

import torch

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
    assert "CUDA in the CUDA scans section (`--device cuda`)" in targets
    assert "## Scans task: training epoch, sliding window, memory (CPU)" in section
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


def test_cuda_without_a_gpu_exits_2_with_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    output = tmp_path / "BENCHMARKS.md"
    assert scans.main(["--device", "cuda", "--quick", "--output", str(output)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and not output.exists()
    assert len(captured.err.splitlines()) == 1 and "--device cuda" in captured.err
    assert "no CUDA device" in captured.err


def _section(name: str, text: str) -> str:
    return f"<!-- benchmarks:{name}:begin -->\n{text}\n<!-- benchmarks:{name}:end -->"


def test_each_device_rewrites_its_own_section_and_keeps_the_others(tmp_path):
    output = tmp_path / "BENCHMARKS.md"
    cpu, cuda = _section("scans", "cpu table"), _section("scans-cuda", "cuda table")
    output.write_text(f"{CPU_SECTION}\n\n{SEARCH_SECTION}\n\n{cpu}\n\n{TAIL}")
    scans.write(output, cuda, scans.section_name("cuda"))  # new: right after the CPU scans section
    assert output.read_text() == f"{CPU_SECTION}\n\n{SEARCH_SECTION}\n\n{cpu}\n\n{cuda}\n\n{TAIL}"
    cpu_new = _section("scans", "cpu table, rerun")
    scans.write(output, cpu_new, scans.section_name("cpu"))
    assert output.read_text() == (f"{CPU_SECTION}\n\n{SEARCH_SECTION}\n\n{cpu_new}\n\n{cuda}\n\n"
                                  f"{TAIL}")
    cuda_new = _section("scans-cuda", "cuda table, rerun")
    scans.write(output, cuda_new, scans.section_name("cuda"))
    assert output.read_text() == (f"{CPU_SECTION}\n\n{SEARCH_SECTION}\n\n{cpu_new}\n\n{cuda_new}"
                                  f"\n\n{TAIL}")
    alone = tmp_path / "cuda_first.md"  # a CUDA section before any CPU one: after search
    alone.write_text(f"{SEARCH_SECTION}\n\n{TAIL}")
    scans.write(alone, cuda, "scans-cuda")
    scans.write(alone, cpu, "scans")
    assert alone.read_text() == f"{SEARCH_SECTION}\n\n{cpu}\n\n{cuda}\n\n{TAIL}"


def test_the_cuda_section_names_the_gpu_and_its_memory():
    """The CUDA report rendered from made-up figures (no GPU needed): its own markers, the GPU in
    its title, max_memory_allocated against the plan's estimate and budget."""
    plan = SimpleNamespace(spacing=(0.8, 0.8, 2.5), patch_size=(128, 128, 52), batch_size=2,
                           filters=(32, 64, 128, 256, 320), memory_budget_gb=64.0)
    setup = SimpleNamespace(plan=plan, folds=[SimpleNamespace(train=["a", "b", "c", "d"])])
    sides = ("MONAI Dataset, DiceCE", "MONAI CacheDataset, DiceCE", "medtune, dice_ce",
             "medtune, dice + CE (fused)")
    training = scans.Training({side: [2.0, 2.2] for side in sides},
                              {side: [0.05] for side in sides},
                              {"medtune preprocessing cache": 0.5, "MONAI CacheDataset": 1.0})
    inference = scans.Inference((192, 192, 77), 64, [0.20], [0.21], 1e-5, [1.5], (2, 192, 192, 77),
                                2)
    memory = scans.CudaMemory(2.1, 64.0, 1.4, 2.6, 17_000_000, 80.0)
    lines = scans.render(setup, scans.FULL_CUDA, training, inference, memory)
    rows = [("command", "`python -m benchmarks.scans --device cuda`"), ("date", "today"),
            ("GPU", "NVIDIA H100 80GB HBM3, 79 GiB")]
    section = scans.render_section(rows, lines, False, "Measured.", "cuda")
    assert section.startswith("<!-- benchmarks:scans-cuda:begin -->\n## Scans task: training "
                              "epoch, sliding window, memory (CUDA, NVIDIA H100 80GB HBM3, 79 GiB)")
    assert section.endswith("<!-- benchmarks:scans-cuda:end -->")
    assert "`torch.cuda.max_memory_allocated` of one step" in section
    assert "| budget (80 % of the device's 80 GiB) | 64.0 |" in section
    assert "mixed precision on every side" in section
    targets = section[section.index("### Targets"):]
    assert len(re.findall(r"^- ", targets, re.MULTILINE)) == 5
    assert "CUDA 1.40 GB with autocast, 2.60 GB in float32, of 64.0 GB **met**" in targets
