"""The environment a result was produced in: versions, device, code identity, host."""

from __future__ import annotations

import os
import platform
import re
import socket
import subprocess
from pathlib import Path
from typing import Any

import torch

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def git_identity(root: Path = PROJECT_ROOT) -> dict[str, Any]:
    """The git commit of the code and whether the work tree had uncommitted changes (None outside git)."""
    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"git_commit": commit, "git_dirty": bool(status) if status is not None else None}


def cpu_name() -> str:
    """The CPU model as the kernel reports it (``platform.processor()`` is often empty on Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> str:
    """The vector instruction sets the CPU has, among those float kernels dispatch on (``avx2 avx512f ...``)."""
    wanted = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "asimd", "sve")
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                have = set(line.split(":", 1)[1].split())
                return " ".join(flag for flag in wanted if flag in have)
    except OSError:
        pass
    return ""


def math_libraries() -> dict[str, str | None]:
    """What computes the floats (results differ across these by kernel rounding): the kernel dispatch level
    torch uses on this CPU, the BLAS and the oneDNN (MKL-DNN) builds torch was compiled with, cuDNN."""
    shown = torch.__config__.show()
    blas = re.search(r"BLAS_INFO=(\w+)", shown)
    mkl = re.search(r"Math Kernel Library Version ([\w.-]+)", shown)
    onednn = re.search(r"MKL-DNN v([\d.]+)", shown)
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {"cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "blas": None if blas is None else blas.group(1) + (f" {mkl.group(1)}" if mkl else ""),
            "onednn": onednn.group(1) if onednn else None,
            "cudnn": str(cudnn) if cudnn else None}


def environment(device: torch.device | str = "cpu") -> dict[str, Any]:
    """What produced a result: python, torch, CUDA, device name, CPU model and instruction sets, the math
    libraries, the GPU model, whether deterministic algorithms were on, threads, git commit, hostname."""
    device = torch.device(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    return {
        "cpu": cpu_name(),
        "cpu_flags": cpu_flags(),
        **math_libraries(),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": str(device),
        "device_name": name,
        "threads": torch.get_num_threads(),
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "slurm_job_id": slurm_job_id(),
        **git_identity(),
    }


def slurm_job_id() -> str | None:
    """The SLURM job running this process (``<array>_<task>`` for an array element), or None outside SLURM."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array and task:
        return f"{array}_{task}"
    return os.environ.get("SLURM_JOB_ID")
