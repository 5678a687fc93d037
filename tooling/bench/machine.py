"""A one-line description of the machine a benchmark ran on: absolute times only mean something with it."""

import os
import platform
from pathlib import Path

import torch


def cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def describe_machine() -> str:
    build = "CUDA " + str(torch.version.cuda) if torch.version.cuda else "CPU build"
    return (
        f"{os.cpu_count()} cores ({cpu_model()}), torch {torch.__version__} ({build}), "
        f"Python {platform.python_version()}"
    )
