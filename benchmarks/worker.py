"""Measurements in a fresh Python process, so no case inherits another's state.

The runner starts ``python -m benchmarks.worker REQUEST`` once per table (timing, agreement)
and once per implementation (peak memory), with the glibc malloc settings the measurement
needs, and reads one JSON line back.

glibc settings. Timing: ``MALLOC_MMAP_THRESHOLD_`` = 32 MiB and ``MALLOC_TRIM_THRESHOLD_`` =
64 MiB, the values glibc itself adopts in a training process once a large tensor has been
freed; temporaries under 32 MiB are then reused instead of being mapped and page-faulted afresh
on every call. With glibc's starting values a run's speed would depend on what ran before it in
the process (an 8 MiB temporary stays mmap'ed until something larger is freed). Cases that ask
for it (``Case.malloc_defaults``) are timed with glibc's defaults as well, the settings a user's
fresh process runs with. Memory: ``MALLOC_MMAP_THRESHOLD_`` = 128 KiB, fixed, so every freed
buffer goes back to the OS and the RSS high-water mark sees each new allocation.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from medtune.kernels import select

from benchmarks import memory
from benchmarks.cases import CASES, Step, bytes_moved
from benchmarks.timing import time_interleaved

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT_S = 900
TIMING_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(32 * 2**20), "MALLOC_TRIM_THRESHOLD_": str(64 * 2**20)}
# None removes the variable: glibc starts from its own defaults (and adapts them as it goes)
DEFAULT_MALLOC = {"MALLOC_MMAP_THRESHOLD_": None, "MALLOC_TRIM_THRESHOLD_": None}
MEMORY_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(128 * 2**10)}


class WorkerError(RuntimeError):
    """A measurement process failed; the message carries the end of its error output."""


def run(request: dict, malloc: dict[str, str | None]) -> dict:
    """Run ``request`` in a fresh process with the ``malloc`` environment (None removes a
    variable); its JSON answer."""
    env = dict(os.environ)
    for name, value in malloc.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "benchmarks.worker", json.dumps(request)],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT_S,
        )
    except subprocess.TimeoutExpired as exc:
        raise WorkerError(f"{request['task']} of {request['case']} took over {TIMEOUT_S} s") from exc
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = "\n".join(done.stderr.strip().splitlines()[-15:]) or "no output"
        raise WorkerError(f"{request['task']} of {request['case']} failed:\n{tail}")
    return json.loads(lines[-1])


# --- inside the worker ---------------------------------------------------------------------


def _relative_difference(mine: tuple, theirs: tuple, quantile: float = 1.0) -> float:
    """Largest |mine - theirs| (or its ``quantile``) / largest |theirs| over the output and the
    gradient."""
    worst = 0.0
    for a, b in zip(mine, theirs):
        if a is None or b is None:
            continue
        a, b = a.detach().double(), b.detach().double()
        if a.shape != b.shape:
            return float("inf")
        difference = (a - b).abs().reshape(-1)
        if quantile < 1.0:
            k = max(1, int(round(quantile * difference.numel())))
            difference = difference.kthvalue(k).values
        worst = max(worst, difference.max().item() / max(b.abs().max().item(), 1e-30))
    return worst


def time_table(request: dict) -> dict:
    """Check every implementation against the peer, then time them interleaved."""
    case, device, mode = CASES[request["case"]], request["device"], request["mode"]
    inputs = case.make_inputs(request["quick"], device)
    steps = {impl.key: Step(case, impl, mode, inputs) for impl in case.implementations}

    peer_result = steps[case.peer]()
    differences = {}
    for key, step in steps.items():
        differences[key] = (None if key == case.peer else _relative_difference(
            step(), peer_result, case.agreement_quantile))
        step.clear()
    del peer_result

    timings = time_interleaved(
        steps,
        warmup=request["warmup"],
        repetitions=request["repetitions"],
        synchronize=torch.cuda.synchronize if device == "cuda" else (lambda: None),
    )
    return {
        "backend": select(case.kernel_op, device).backend,
        "inputs": inputs.description,
        "pred_bytes": inputs.pred_bytes,
        "moved_bytes": bytes_moved(inputs, mode),
        "differences": differences,
        "timings": {k: {"samples_ms": t.samples_ms, "calls": t.calls} for k, t in timings.items()},
    }


def measure_memory(request: dict) -> dict:
    """Peak extra memory of one call of one implementation."""
    case = CASES[request["case"]]
    inputs = case.make_inputs(request["quick"], request["device"])
    step = Step(case, case.implementation(request["impl"]), request["mode"], inputs)
    try:
        return {"extra_bytes": memory.peak_extra_bytes(step, request["device"])}
    except memory.MemoryMeasurementError as exc:
        return {"problem": str(exc)}


TASKS = {"time": time_table, "memory": measure_memory}

if __name__ == "__main__":
    request = json.loads(sys.argv[1])
    if request.get("threads"):
        torch.set_num_threads(request["threads"])
    print(json.dumps(TASKS[request["task"]](request)))
