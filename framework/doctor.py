"""What ``medtune doctor`` checks: interpreter, libraries, compiler, extension, devices, backends."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from dataclasses import dataclass

import torch

import medtune
from medtune.kernels import candidates, forced_backend, ops
from medtune.kernels.extension import build_directory, load_extension, unavailable_reason


@dataclass
class OpRow:
    op: str
    device: str
    chosen: str
    alternatives: list[str]


@dataclass
class Report:
    environment: list[tuple[str, str]]
    ops: list[OpRow]


def _compiler() -> str:
    cxx = os.environ.get("CXX", "c++")
    path = shutil.which(cxx)
    if path is None:
        return f"not found ({cxx!r} is not on PATH): the C++ kernels cannot be built"
    try:
        version = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=20)
        first = version.stdout.splitlines()[0] if version.stdout else "unknown version"
    except (OSError, subprocess.SubprocessError) as exc:
        first = f"version unknown ({exc})"
    return f"{path}: {first}"


def _triton() -> str:
    try:
        import triton
    except ImportError:
        return "not installed (pip install 'medtune[triton]')"
    interpreter = os.environ.get("TRITON_INTERPRET") == "1"
    return f"{triton.__version__}" + (" (CPU interpreter: TRITON_INTERPRET=1)" if interpreter else "")


def _devices() -> list[str]:
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices.append("cuda")
    return devices


def collect() -> Report:
    """Build the extension if needed and report what every op will run on."""
    module = load_extension()
    extension = (
        f"built and loaded ({build_directory()})"
        if module is not None
        else f"not available: {unavailable_reason()}"
    )
    if torch.cuda.is_available():
        gpu = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    else:
        gpu = "none (CUDA not available)"
    environment = [
        ("medtune", medtune.__version__),
        ("python", platform.python_version()),
        ("torch", f"{torch.__version__} ({torch.get_num_threads()} threads)"),
        ("triton", _triton()),
        ("compiler", _compiler()),
        ("C++ extension medtune._C", extension),
        ("GPU", gpu),
        ("forced backend", forced_backend() or "none (best available per device)"),
    ]
    rows = []
    for op in ops():
        for device in _devices():
            found = candidates(op, device)
            chosen = next((impl.backend for impl, reason in found if reason is None), "none")
            alternatives = [
                impl.backend + ("" if reason is None else f" (unavailable: {reason})")
                for impl, reason in found
                if impl.backend != chosen
            ]
            rows.append(OpRow(op, device, chosen, alternatives))
    return Report(environment, rows)
