"""What a profile was measured on: host CPU, cores, GPU, library versions, date, command.

Profiles are versioned artifacts (STYLE 7): every number in one is only
meaningful together with this metadata.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import shutil
import subprocess
from importlib import metadata as importlib_metadata
from typing import Any

__all__ = ["LIBRARIES", "cpu_model", "gpu_model", "gpu_runtimes", "library_versions", "host_metadata"]

# Distributions whose versions change measured latencies (runtimes) or the
# numbers' meaning (numpy, ray).
LIBRARIES = ("varipipe", "onnxruntime", "onnxruntime-gpu", "opencv-python-headless", "llama_cpp_python",
             "ray", "numpy", "torch")
# nvidia-smi answers in well under a second; a wedged driver must not hang a profile run.
_NVIDIA_SMI_TIMEOUT_S = 10


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo, else platform's answer."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu_model() -> str | None:
    """The first NVIDIA GPU's name, or None where there is none (or no driver)."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        out = subprocess.run([smi, "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=_NVIDIA_SMI_TIMEOUT_S, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    names = [line.strip() for line in out.splitlines() if line.strip()]
    return names[0] if names else None


def gpu_runtimes() -> list[str]:
    """Installed runtimes that can use a GPU: PyTorch's CUDA (the GPU paths), onnxruntime's CUDA
    provider, llama.cpp GPU offload."""
    found = []
    try:
        import torch

        if torch.cuda.is_available():
            found.append(f"torch-cuda-{torch.version.cuda}")
    except ImportError:
        pass
    try:
        import onnxruntime

        if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
            found.append("onnxruntime-cuda")
    except ImportError:
        pass
    try:
        import llama_cpp

        if llama_cpp.llama_supports_gpu_offload():
            found.append("llama_cpp-gpu-offload")
    except (ImportError, AttributeError, OSError):
        pass
    return found


def library_versions() -> dict[str, str]:
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            continue
    return versions


def host_metadata(command: str) -> dict[str, Any]:
    """Metadata for a profile made now, on this host, by ``command``."""
    return {
        "host_cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "gpu": (gpu := gpu_model()),
        "gpu_runtimes": gpu_runtimes() if gpu else [],
        "platform": platform.platform(),
        "python": platform.python_version(),
        "libraries": library_versions(),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": command,
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }
