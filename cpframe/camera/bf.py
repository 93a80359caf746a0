"""Simulated brighter-fatter effect: pixel areas that shrink with the charge already collected.

Model (the one Astier et al. 2019, §3, derive their covariance model from): while an
exposure integrates, the collecting area of pixel ``x`` changes in proportion to the charge
``Q`` already stored around it::

    δA(x) / A = Σ_k a_k Q(x + k)          (a in 1/e-, Q in e-)

with ``a_00 < 0`` (a full pixel repels the charge still arriving), ``a_k > 0`` around it and
``Σ_k a_k = 0`` (the areas of all pixels add up to the same total: the mean is unchanged).
To first order in ``a`` a flat field of mean ``μ`` (e-) then has covariances
``C_k = μ δ_k0 + a_k μ² + O(a² μ³)`` -- the ``a`` matrix of Astier+19 eq. 20 *is* this
truth.

The simulator integrates the exposure in ``N_STEPS`` equal sub-exposures: step ``t`` draws
``Poisson(λ/N · (1 + s · a ⋆ Q_{t−1}))`` with ``Q_{t−1}`` the charge of the steps before.
A finite number of steps loses the correlation inside a step (the first-order covariance
comes out as ``(1 − 1/N) a μ²``), so the applied matrix is ``s = N / (N − 1)`` times the
truth, which makes the first order exact; the higher orders (Astier+19's ``a⊗a`` terms) are
then right to O(1/N) of themselves, below 1 % of the covariance at 100 000 e- for
``N_STEPS = 8`` (``tests/test_bfk.py`` checks the variance and the nearest covariances of a
large simulated flat against the Astier model).

Truth per amp: ``AmpTruth.bf_a00`` (1/e-, ≤ 0; 0 = off) drawn when the ``brighter_fatter``
effect is on (its value is the nominal a00; ``True`` = −2.5e-6): a00 = value × U(0.85, 1.15)
from its own ``SeedSequence`` stream.  The shape around the centre is fixed
(:func:`bf_a_matrix`): ``a_k ∝ r_k^−3`` with the row-lag (parallel) neighbours 1.3× the
column-lag ones, truncated at lag :data:`RADIUS`, normalised so ``Σ_{k≠0} a_k = −a00``.

This is an area model: for a flat it is exactly the mechanism behind the covariances; for a
star it moves charge only through the area change, not through the gradient of the
illumination across a boundary (the Coulton et al. 2018 kernel correction also has that
term).  The verification of cpBfk therefore uses flats (docs/algorithms.md, BFK).
"""

from __future__ import annotations

import numpy as np

__all__ = ["TAG_BF", "RADIUS", "N_STEPS", "draw_amp_bf", "bf_a_matrix", "bf_kernel_full",
           "apply_brighter_fatter"]

#: SeedSequence tag of the brighter-fatter draws (arbitrary constant).
TAG_BF = 0x6266_6B21
#: Largest lag (rows and columns) at which the truth's a_k is non-zero.
RADIUS = 3
#: Sub-exposures of the integration.
N_STEPS = 8
_ROW_ANISOTROPY = 1.3
_SCALE_RANGE = (0.85, 1.15)


def draw_amp_bf(seed: int, detector_id: int, n_amps: int, strength: float) -> list[float]:
    """a00 (1/e-) per amp around the nominal ``strength`` (≤ 0); zeros when 0.

    >>> draw_amp_bf(1, 4, 2, 0.0)
    [0.0, 0.0]
    """
    if not strength:
        return [0.0] * n_amps
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), TAG_BF, int(detector_id)]))
    return [-abs(float(strength)) * float(rng.uniform(*_SCALE_RANGE)) for _ in range(n_amps)]


def _shape() -> np.ndarray:
    """Unnormalised weights on lags (dy, dx) in [−R, R]², 0 at the centre."""
    r = RADIUS
    dy, dx = np.mgrid[-r:r + 1, -r:r + 1].astype(np.float64)
    rr = np.hypot(dy, dx)
    w = np.zeros_like(rr)
    nz = rr > 0
    w[nz] = rr[nz] ** -3.0
    w[(np.abs(dy) == 1) & (dx == 0)] *= _ROW_ANISOTROPY
    return w


def bf_kernel_full(a00: float) -> np.ndarray:
    """The full (2R+1)² truth matrix a_k on lags (dy, dx) ∈ [−R, R]² (1/e-), summing to 0.

    >>> k = bf_kernel_full(-2e-6); round(float(k.sum()) * 1e12, 6), float(k[3, 3])
    (0.0, -2e-06)
    """
    w = _shape()
    full = w * (-float(a00) / w.sum())
    full[RADIUS, RADIUS] = float(a00)
    return full


def bf_a_matrix(a00: float, size: int) -> np.ndarray:
    """Truth a_ij for row lag i and column lag j in [0, size) (1/e-), Astier+19's quarter."""
    full = bf_kernel_full(a00)
    out = np.zeros((size, size))
    n = min(size, RADIUS + 1)
    out[:n, :n] = full[RADIUS:RADIUS + n, RADIUS:RADIUS + n]
    return out


def apply_brighter_fatter(rng: np.random.Generator, lam: np.ndarray, a00: float, poisson: bool = True) -> np.ndarray:
    """Collect ``lam`` (expected e- per pixel, float32) with pixel areas following the charge.

    Returns the collected charge (float32, e-).  Without ``poisson`` the expectation is
    returned unchanged (a noiseless flat has no fluctuations for the areas to follow; the
    mean is conserved to first order).  Poisson draws use the Gaussian approximation above
    100 e- per step, like the rest of the simulator.
    """
    if not a00 or not poisson:
        return lam
    from scipy.ndimage import correlate

    kern = (bf_kernel_full(a00) * (N_STEPS / (N_STEPS - 1.0))).astype(np.float32)
    step = lam.astype(np.float32) / np.float32(N_STEPS)
    q = np.zeros_like(step)
    for t in range(N_STEPS):
        mean = step
        if t:
            mean = step * (np.float32(1.0) + correlate(q, kern, mode="reflect"))
            np.maximum(mean, 0.0, out=mean)
        q += _draw(rng, mean)
    return q


def _draw(rng: np.random.Generator, mean: np.ndarray) -> np.ndarray:
    small = mean <= 100.0
    out = rng.standard_normal(mean.shape, dtype=np.float32)
    out *= np.sqrt(mean)
    out += mean
    if small.any():
        out[small] = rng.poisson(mean[small])
    return out
