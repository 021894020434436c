"""Seeded synthetic embeddings (clustered, like real item embeddings) for tests and benchmarks."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

Floats = npt.NDArray[np.float32]


def clustered(
    count: int, dimension: int, *, clusters: int = 100, spread: float = 0.35, seed: int = 0
) -> Floats:
    """`count` vectors around `clusters` random centres (Gaussian noise of relative size `spread`)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dimension)).astype(np.float32)
    members = rng.integers(0, clusters, size=count)
    noise = rng.normal(scale=spread, size=(count, dimension)).astype(np.float32)
    vectors: Floats = (centres[members] + noise).astype(np.float32)
    return vectors
