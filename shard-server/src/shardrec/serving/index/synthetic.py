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


def low_rank_clustered(
    count: int,
    dimension: int,
    *,
    intrinsic: int,
    clusters: int = 100,
    spread: float = 0.45,
    noise: float = 0.05,
    seed: int = 0,
) -> Floats:
    """`count` vectors whose variance lives in `intrinsic` of the `dimension` axes, like trained
    embeddings: `clusters` centres and their Gaussian spread drawn in an `intrinsic`-dimensional
    latent space, mapped by a random orthonormal basis, plus isotropic noise of relative size
    `noise` in every axis. The isotropic generator (`clustered`) spreads its variance over every
    axis, which makes approximate search harder than on real embeddings."""
    if not 1 <= intrinsic <= dimension:
        raise ValueError(f"intrinsic {intrinsic} must be in 1..{dimension}")
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.normal(size=(dimension, intrinsic)))
    centres = rng.normal(size=(clusters, intrinsic)).astype(np.float32)
    members = rng.integers(0, clusters, size=count)
    vectors: Floats = np.empty((count, dimension), dtype=np.float32)
    block = 262_144  # bounded temporaries at 10M x 256
    projection = basis.T.astype(np.float32)
    for start in range(0, count, block):
        end = min(count, start + block)
        latent = centres[members[start:end]] + rng.normal(scale=spread, size=(end - start, intrinsic)).astype(
            np.float32
        )
        vectors[start:end] = latent @ projection
        vectors[start:end] += rng.normal(scale=noise, size=(end - start, dimension)).astype(np.float32)
    return vectors


def participation_ratio(vectors: Floats) -> float:
    """(sum of PCA variances)^2 / sum of their squares, of the unit-normalised, centred vectors: how
    many axes the variance really uses (d for isotropic data, 1 for data on a line)."""
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    centred = unit - unit.mean(axis=0)
    variances = np.linalg.eigvalsh(centred.T.astype(np.float64) @ centred)
    return float(variances.sum() ** 2 / (variances**2).sum())
