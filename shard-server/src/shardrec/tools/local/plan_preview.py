"""The plan preview's inputs on this machine, and `status.planPreview` of a paused local cluster.

`recctl plan` and the local supervisor read the same two things the pure preview cannot: the item
count (the header of `items.npy` when the source is a local folder) and the measured rates
(`benchmarks/coefficients.json`, the capacity planner's file). While `spec.paused` is true the
supervisor writes the preview into status.json, as the operator does into the object's status.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np

from shardrec.api.v1alpha1 import PlanPreviewStatus, RecommenderCluster, RecommenderClusterStatus
from shardrec.planning.preview import Rates, deployed_from_status, preview
from shardrec.planning.preview_format import to_status
from shardrec.tools.capacity.coefficients import (
    CoefficientsError,
    default_coefficients_path,
    load_coefficients,
)
from shardrec.tools.capacity.planner import preview_rates

log = logging.getLogger(__name__)

PAUSED_NOTE = "spec.paused is true: nothing of this happens until it is false"


def item_count(source: str) -> int | None:
    """Rows of `items.npy` when the source is a folder on this machine (its header only)."""
    if not source.startswith(("/", "file://")):
        return None
    path = Path(source.removeprefix("file://")) / "items.npy"
    try:
        with path.open("rb") as handle:
            version = np.lib.format.read_magic(handle)
            if version == (1, 0):
                shape, _, _ = np.lib.format.read_array_header_1_0(handle)
            else:
                shape, _, _ = np.lib.format.read_array_header_2_0(handle)
    except (OSError, ValueError):
        return None
    return int(shape[0]) if shape else None


def measured_rates(dimension: int, m: int, path: Path | None = None) -> Rates:
    """The preview's rates from the coefficients file; raises CoefficientsError naming it."""
    path = path or default_coefficients_path()
    return preview_rates(load_coefficients(path), dimension, m, str(path))


@functools.lru_cache(maxsize=8)
def _default_rates(dimension: int, m: int) -> Rates | None:
    """The default file's rates, read once per process (the supervisor ticks every 0.2 s)."""
    try:
        return measured_rates(dimension, m)
    except CoefficientsError as error:
        log.info("plan preview without measured rates: %s", error)
        return None


def paused_preview(cluster: RecommenderCluster, previous: RecommenderClusterStatus) -> PlanPreviewStatus:
    """`status.planPreview` of a paused local cluster: its spec over what the last status says
    runs (the spec file already holds the new spec, so it is not the applied one)."""
    spec = cluster.spec.model_copy(update={"paused": False})
    rates = _default_rates(spec.index.dimension, spec.index.hnsw.m)
    plan = preview(
        cluster.metadata.name,
        spec,
        deployed_from_status(previous),
        rates,
        item_count(spec.index.source),
        carries_writes=True,  # the supervisor carries logged writes into a new layout
    )
    return to_status(replace(plan, notes=(*plan.notes, PAUSED_NOTE)), cluster.metadata.generation)
