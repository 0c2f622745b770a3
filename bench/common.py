"""What every benchmark prints: the machine, then per measurement the subject against a baseline
measured in the same run, as a ratio, with the absolute figures beside it."""

from __future__ import annotations

import os
import platform
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = ROOT / "data" / "workflows"


def machine() -> str:
    """Cores, torch threads, CPU model and load: timings mean little without them."""
    import torch

    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"machine: {os.cpu_count()} cores ({model or platform.processor()}), torch {torch.__version__} "
            f"with {torch.get_num_threads()} threads, load average {load}")


def header(title: str) -> None:
    print(f"\n== {title}")
    print(machine(), flush=True)


def ratio_line(what: str, subject: str, subject_value: float, baseline: str, baseline_value: float, unit: str,
               higher_is_better: bool = True) -> float:
    """Print and return how many times better ``subject`` is than ``baseline`` on ``what``."""
    ratio = subject_value / baseline_value if higher_is_better else baseline_value / subject_value
    print(f"{what}: {subject} {subject_value:,.4g} {unit} vs {baseline} {baseline_value:,.4g} {unit} "
          f"-> {ratio:,.1f}x", flush=True)
    return ratio


@contextmanager
def timed(into: dict, key: str):
    started = time.perf_counter()
    yield
    into[key] = time.perf_counter() - started


def set_threads() -> int:
    """Torch uses every core, as training and evaluation do."""
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    return torch.get_num_threads()
