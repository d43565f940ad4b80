"""The machine numbers are measured on, and how many CPUs work may use. Reads /proc and package metadata; imports no torch."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys


def _cpuinfo_blocks() -> list[dict]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError:
        return []
    blocks = []
    for chunk in text.strip().split("\n\n"):
        entry = {}
        for line in chunk.splitlines():
            key, sep, value = line.partition(":")
            if sep:
                entry[key.strip()] = value.strip()
        blocks.append(entry)
    return blocks


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def cpu_budget() -> int:
    """CPUs this process may keep busy: its affinity mask, capped by a cgroup v2 CPU quota (a container's
    ``--cpus``), which the affinity mask does not show. Threads beyond it only wait for each other."""
    cpus = usable_cpus()
    try:
        with open("/sys/fs/cgroup/cpu.max", encoding="ascii") as f:
            quota, period = f.read().split()[:2]
    except (OSError, ValueError):
        return cpus
    if quota == "max":
        return cpus
    return max(1, min(cpus, -(-int(quota) // int(period))))


def available_memory() -> int | None:
    """Bytes this process could still allocate without swapping: MemAvailable, capped by a cgroup v2 limit."""
    available = None
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            available = next((int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:")), None)
    except (OSError, ValueError, IndexError):
        pass
    if available is None:
        try:
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (AttributeError, ValueError, OSError):
            return None
    try:  # a container's limit is lower than what the host has free
        with open("/sys/fs/cgroup/memory.max", encoding="ascii") as f:
            limit = f.read().strip()
        with open("/sys/fs/cgroup/memory.current", encoding="ascii") as f:
            used = int(f.read().strip())
        if limit.isdigit():
            available = min(available, max(0, int(limit) - used))
    except (OSError, ValueError):
        pass
    return available


def nvidia_driver_missing() -> str | None:
    """Why this machine has no NVIDIA driver, or None when it has one.

    Asking ONNX Runtime for CUDA loads ~250 MB of CUDA and cuDNN libraries even where no driver
    exists (see GUIDE), so this is checked first: the kernel driver's /proc entry, else whether the
    driver's user-space library loads. ``libcuda.so.1`` belongs to the driver (never to a CUDA
    toolkit or a pip wheel), and loading it loads no CUDA runtime library.
    """
    if os.path.exists("/proc/driver/nvidia"):
        return None
    import ctypes

    library = "nvcuda.dll" if sys.platform == "win32" else "libcuda.so.1"
    try:
        ctypes.CDLL(library)
    except OSError as e:
        detail = str(e).strip().removeprefix(f"{library}: ") or type(e).__name__
        return f"no NVIDIA driver on this machine ({library} cannot be loaded: {detail}; no /proc/driver/nvidia)"
    return None


def cpu_info() -> dict:
    blocks = _cpuinfo_blocks()
    try:
        allowed = os.sched_getaffinity(0)
    except (AttributeError, OSError):
        allowed = None
    cores = set()
    for b in blocks:
        if allowed is not None and b.get("processor", "").isdigit() and int(b["processor"]) not in allowed:
            continue
        if "core id" in b:
            cores.add((b.get("physical id", "0"), b["core id"]))
    usable = usable_cpus()
    model = next((b["model name"] for b in blocks if "model name" in b), "") or platform.processor() or "unknown"
    return {
        "model": model,
        "logical_cpus": os.cpu_count() or 1,
        "usable_cpus": usable,
        # SMT siblings share one core's FMA units, so physical cores is the useful thread count.
        "physical_cores": min(len(cores), usable) if cores else usable,
        "machine": platform.machine(),
    }


def physical_cores() -> int:
    return cpu_info()["physical_cores"]


def gpu_info() -> dict | None:
    """Name and driver of GPU 0 from nvidia-smi, or the kernel driver's version file."""
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader",
                                  "--id=0"], capture_output=True, text=True, timeout=10)
            if out.returncode == 0 and out.stdout.strip():
                name, driver, memory = (p.strip() for p in out.stdout.strip().splitlines()[0].split(","))
                return {"name": name, "driver": driver, "memory": memory, "source": "nvidia-smi"}
        except (OSError, subprocess.TimeoutExpired, ValueError):
            pass
    try:
        with open("/proc/driver/nvidia/version", encoding="utf-8") as f:
            first = f.readline().strip()
        return {"name": None, "driver": first, "memory": None, "source": "/proc/driver/nvidia/version"}
    except OSError:
        return None


def package_version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def environment(threads: int) -> dict:
    import numpy as np
    import onnxruntime as ort

    torch = sys.modules.get("torch")  # reported only if an engine really imported it
    env = {
        "cpu": cpu_info(),
        "threads": threads,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "onnxruntime": ort.__version__,
        "onnxruntime_package": next((p for p in ("onnxruntime-gpu", "onnxruntime") if package_version(p)), None),
        "torch": str(torch.__version__) if torch is not None else None,
        "torch_cuda": (torch.version.cuda if torch is not None else None),
        "gpu": None,
    }
    return env
