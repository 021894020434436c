"""CPU quantities of a container spec, in cores and in the threads or processes they allow. Pure."""

from __future__ import annotations

import math
from typing import Final

from shardrec.api import v1alpha1 as api

_CPU_SUFFIXES: Final = {"m": 1e-3, "": 1.0, "k": 1e3}


def cpu_cores(quantity: str) -> float | None:
    """A CPU quantity in cores (`500m` -> 0.5, `2` -> 2.0); None for a form CPUs are not given in."""
    text = quantity.strip()
    suffix = text[-1] if text and text[-1].isalpha() else ""
    try:
        number = float(text[: len(text) - len(suffix)])
    except ValueError:
        return None
    factor = _CPU_SUFFIXES.get(suffix)
    return number * factor if factor is not None and number > 0 else None


def cpu_threads(requirements: api.ResourceRequirements) -> int | None:
    """Threads a container's CPU allows: ceil of its CPU limit (what the CFS quota enforces), or
    of its request without a limit; None when neither is set (the process then counts its own
    CPUs, quota included). Passed as `--search-threads` and `--workers`, so a pod limited to 2 CPUs
    on a 64-core node runs 2 search threads, not 64 that the quota throttles."""
    for quantities in (requirements.limits, requirements.requests):
        cores = cpu_cores(quantities["cpu"]) if "cpu" in quantities else None
        if cores is not None:
            return max(1, math.ceil(cores - 1e-9))
    return None
