"""The CPU cores ftpack computes on: one thread per physical core, for torch and llama.cpp."""

from __future__ import annotations

import os


def physical_cores() -> int:
    """Physical cores this process may run on (hyper-threads share a core's FMA units, so
    more threads than cores only adds contention). llama.cpp's own default is the same
    count, which is what Ollama runs with unless a Modelfile sets ``num_thread``."""
    try:
        allowed = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - macOS / Windows
        allowed = os.cpu_count() or 1
    try:
        import psutil

        cores = psutil.cpu_count(logical=False) or allowed
        logical = psutil.cpu_count(logical=True) or allowed
    except ImportError:  # pragma: no cover - psutil is a dependency of accelerate
        return allowed
    per_core = max(1, logical // max(cores, 1))
    return max(1, min(cores, allowed // per_core or 1))
