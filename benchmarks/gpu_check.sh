#!/usr/bin/env bash
# GPU readiness check, in at most 8 minutes: on a machine with CUDA, the kernel tests' CUDA
# cases (Triton compiled, never interpreted) and the CUDA benchmark cases, whose figures it
# writes into BENCHMARKS.md (the section between the benchmarks:cuda markers, GPU named), then
# the scans benchmark on CUDA (`python -m benchmarks.scans --device cuda`: the section between
# the benchmarks:scans-cuda markers; with under MEDTUNE_GPU_SCANS_FULL_SECONDS left, its --quick
# run instead, written to the logs only; its section is copied into the logs either way); on a
# machine without CUDA, a short run of the CPU kernel tests (no scans run), BENCHMARKS.md left
# unchanged and the GPU figures reported as still pending.
#
#   bash benchmarks/gpu_check.sh
#
# Python: $MEDTUNE_PYTHON if set, else the first of .venv/bin/python, python3, python whose
# torch sees a GPU (else the first with torch at all). If that interpreter lacks medtune (from
# this checkout), pytest or hypothesis, `pip install -e ".[test]"` adds them (offline: medtune
# alone, without deps): into it if it runs in a virtual environment, else into one made at
# $MEDTUNE_GPU_VENV (default ~/.cache/medtune/gpu-check-venv) on top of its packages, so an
# installed CUDA torch is reused.
# Settings: MEDTUNE_GPU_CHECK_SECONDS (total budget, default 480), MEDTUNE_GPU_CASES (the
# benchmark cases, default below), MEDTUNE_GPU_CHECK_LOGS (folder for the logs and a copy of
# BENCHMARKS.md; default a new temporary folder), MEDTUNE_GPU_SCANS_FULL_SECONDS (seconds that
# must be left for the full scans run, default 240; kept free of the kernel benchmarks is
# MEDTUNE_GPU_SCANS_RESERVE, default 90 s, enough for the quick run).
# Exit status: 0 when every test that ran passed and, with a GPU, the figures were written (the
# scans run: when it started, it finished).

set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
BUDGET="${MEDTUNE_GPU_CHECK_SECONDS:-480}"
CASES="${MEDTUNE_GPU_CASES:-glf_stats,glf_loss_sigmoid,glf_loss_softmax,warp3d_80,chol_append_1000}"
SCANS_FULL="${MEDTUNE_GPU_SCANS_FULL_SECONDS:-240}"
SCANS_RESERVE="${MEDTUNE_GPU_SCANS_RESERVE:-90}"
LOGS="${MEDTUNE_GPU_CHECK_LOGS:-$(mktemp -d "${TMPDIR:-/tmp}/medtune-gpu-check.XXXXXX")}"
VENV="${MEDTUNE_GPU_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/medtune/gpu-check-venv}"
mkdir -p "$LOGS"
START=$SECONDS

say() { printf 'gpu_check: %s\n' "$*"; }
left() { echo $((BUDGET - (SECONDS - START))); }

# What an interpreter offers: "cuda", "cpu" (torch without a GPU) or "none".
torch_device() {
    "$1" -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")' 2>/dev/null \
        | tail -n 1 || true
}

# True when the interpreter imports this checkout's medtune and the test tools.
ready() {
    "$1" - "$ROOT" <<'EOF' >/dev/null 2>&1
import sys
from pathlib import Path
import hypothesis, pytest  # noqa: F401
import medtune
assert Path(medtune.__file__).resolve().is_relative_to(Path(sys.argv[1]).resolve())
EOF
}

# --- 1. an interpreter with torch --------------------------------------------------------
PYTHON="" DEVICE=""
for candidate in "${MEDTUNE_PYTHON:-}" "$ROOT/.venv/bin/python" python3 python; do
    [ -n "$candidate" ] && command -v "$candidate" >/dev/null 2>&1 || continue
    found="$(torch_device "$candidate")"
    if [ "$found" = cuda ]; then PYTHON="$candidate" DEVICE=cuda; break; fi
    if [ "$found" = cpu ] && [ -z "$PYTHON" ]; then PYTHON="$candidate" DEVICE=cpu; fi
done
if [ -z "$PYTHON" ]; then
    say "no Python with torch found (set MEDTUNE_PYTHON): nothing checked, GPU figures stay pending"
    exit 1
fi
say "Python $PYTHON, torch on $DEVICE ($(left) s of the budget left)"

# --- 2. medtune and the test tools --------------------------------------------------------
if ! ready "$PYTHON"; then
    # A virtual environment is filled in place (one made on top of it would not see its
    # packages); a system interpreter gets one of its own on top of its packages.
    if [ "$("$PYTHON" -c 'import sys; print(sys.prefix != sys.base_prefix)')" != True ]; then
        if [ ! -x "$VENV/bin/python" ]; then
            say "making a virtual environment at $VENV on top of $PYTHON's packages"
            "$PYTHON" -m venv --system-site-packages "$VENV" || exit 1
        fi
        PYTHON="$VENV/bin/python"
    fi
    if ! ready "$PYTHON"; then
        say "installing medtune with its test extras (pip install -e .[test])"
        if ! timeout $(( $(left) / 3 )) "$PYTHON" -m pip install -q -e ".[test]" \
                >"$LOGS/pip.log" 2>&1; then
            say "pip could not install the extras (offline?): medtune alone, see $LOGS/pip.log"
            timeout 120 "$PYTHON" -m pip install -q --no-deps --no-build-isolation -e . \
                >>"$LOGS/pip.log" 2>&1
        fi
    fi
    if ! ready "$PYTHON"; then
        say "medtune, pytest or hypothesis still missing in $PYTHON (see $LOGS/pip.log)"
        say "GPU figures stay pending"
        exit 1
    fi
fi

# --- 3. without a GPU: the CPU kernel tests, briefly ---------------------------------------
if [ "$DEVICE" != cuda ]; then
    say "no CUDA device: running the CPU kernel tests (dispatch and glf_stats, torch and C++);"
    say "the scans benchmark on CUDA is not run"
    timeout "$(left)" "$PYTHON" -m pytest -q -rs -p no:cacheprovider \
        tests/kernels/test_dispatch.py tests/kernels/test_glf_stats.py \
        -k "not triton or test_cuda_runs" 2>&1 | tee "$LOGS/cpu-tests.log"
    status=${PIPESTATUS[0]}
    say "CPU kernel tests: $(tail -n 1 "$LOGS/cpu-tests.log")"
    say "the GPU figures stay pending: BENCHMARKS.md is unchanged (its CUDA section needs a GPU)"
    exit "$status"
fi

# --- 4. with a GPU: the CUDA kernel tests, Triton compiled --------------------------------
GPU="$("$PYTHON" -c 'import torch; print(torch.cuda.get_device_name(0))')"
say "GPU: $GPU; the CUDA cases of tests/kernels, Triton compiled (TRITON_INTERPRET unset)"
test_seconds=$(( $(left) / 2 ))
env -u TRITON_INTERPRET timeout "$test_seconds" "$PYTHON" -m pytest -p no:cacheprovider -rfEs \
    tests/kernels -k cuda 2>&1 | tee "$LOGS/cuda-tests.log"
test_status=${PIPESTATUS[0]}
if [ "$test_status" -eq 124 ]; then
    say "the CUDA kernel tests ran out of their $test_seconds s (partial log: $LOGS/cuda-tests.log)"
fi
say "CUDA kernel tests on $GPU: $(tail -n 1 "$LOGS/cuda-tests.log")"

# --- 5. the CUDA benchmarks, written into BENCHMARKS.md -----------------------------------
bench_seconds=$(( $(left) - 10 - SCANS_RESERVE ))
if [ "$bench_seconds" -lt 60 ]; then
    say "only $bench_seconds s left for the CUDA benchmarks: not started"
    bench_status=124
else
    say "CUDA benchmarks ($CASES) in at most $bench_seconds s"
    env -u TRITON_INTERPRET timeout "$bench_seconds" "$PYTHON" -m benchmarks --device cuda \
        --cases "$CASES" --output BENCHMARKS.md 2>&1 | tee "$LOGS/cuda-benchmarks.log"
    bench_status=${PIPESTATUS[0]}
fi
if [ "$bench_status" -eq 0 ]; then
    say "wrote the CUDA section of BENCHMARKS.md ($GPU); logs in $LOGS"
else
    say "the CUDA benchmarks did not finish (status $bench_status): their section is unchanged,"
    say "GPU figures stay pending"
fi

# --- 6. the scans benchmark on CUDA -------------------------------------------------------
scans_seconds=$(( $(left) - 5 ))
scans_status=0
if [ "$scans_seconds" -lt 45 ]; then
    say "only $scans_seconds s left for the scans benchmark on CUDA: not started (still pending)"
else
    if [ "$scans_seconds" -ge "$SCANS_FULL" ]; then
        scans_args=(--device cuda --output BENCHMARKS.md) scans_file=BENCHMARKS.md
        say "scans benchmark on CUDA, full, in at most $scans_seconds s"
    else  # a quick run's numbers say nothing: kept out of BENCHMARKS.md
        scans_args=(--device cuda --quick --output "$LOGS/scans-cuda-quick.md")
        scans_file="$LOGS/scans-cuda-quick.md"
        say "scans benchmark on CUDA, --quick (only $scans_seconds s left), in the logs only"
    fi
    env -u TRITON_INTERPRET timeout "$scans_seconds" "$PYTHON" -m benchmarks.scans \
        "${scans_args[@]}" >"$LOGS/scans-cuda.log" 2>&1
    scans_status=$?
    if [ "$scans_status" -eq 0 ]; then
        sed -n '/<!-- benchmarks:scans-cuda:begin -->/,/<!-- benchmarks:scans-cuda:end -->/p' \
            "$scans_file" >"$LOGS/scans-cuda-section.md"
        cat "$LOGS/scans-cuda-section.md"
        say "scans benchmark on CUDA ($GPU) written to $scans_file; section in" \
            "$LOGS/scans-cuda-section.md"
    else
        tail -n 20 "$LOGS/scans-cuda.log"
        say "the scans benchmark on CUDA did not finish (status $scans_status; log" \
            "$LOGS/scans-cuda.log): its section is unchanged"
    fi
fi
cp BENCHMARKS.md "$LOGS/BENCHMARKS.md"
say "done in $((SECONDS - START)) s; logs and a copy of BENCHMARKS.md in $LOGS"
[ "$test_status" -eq 0 ] && [ "$bench_status" -eq 0 ] && [ "$scans_status" -eq 0 ]
