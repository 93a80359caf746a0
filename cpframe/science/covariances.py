"""Pixel covariances of flat pairs and the Astier et al. 2019 full covariance model (PTC FULLCOVARIANCE).

Measurement (cp_pipe ``cpPtcExtract`` with ``maximumRangeCovariancesAstier``): on the
difference image ``D`` of a flat pair, with weights ``w`` (1 for pixels used, 0 otherwise),
for every lag (dy, dx) with 0 ≤ dy, dx < L::

    C(dy, dx) = ½ · ½ [cov_w(D(x), D(x + (dy, dx))) + cov_w(D(x), D(x + (dy, −dx)))]

where ``cov_w`` is the covariance over the pixel pairs whose both ends have weight 1 (sums
by FFT of the zero-padded images, so nothing wraps around), the first ½ undoes the doubling
of the variance in a difference of two exposures, and the two diagonal directions are
averaged (the model is symmetric).  Units: adu².

Model (Astier+19 eq. 20), μ in adu, g in e-/adu, x = μ g (e-)::

    C_ij(μ) = { x [a x + ⅔ (a⊗a + c) x² + (⅓ a⊗a⊗a + ⅚ a⊗c) x³] + n_ij }/g² + δ_i0 δ_j0 μ/g

with ``a`` (1/e-), ``c = a·b`` (1/e-²) and ``n`` (e-²) matrices on lags [0, r)²,
``⊗`` the 2-d convolution of the matrices extended to all four quadrants by symmetry.
Fitted by least squares with weights 1/σ(C_ij) where σ(C_00) = C_00 √(2/N) and
σ(C_ij) = C_00 / √N for the other lags (N = pixels used), after a per-lag parabola fit
with c = 0 that gives the starting values (as cp_pipe does).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["measure_covariances", "symmetrize", "cov_model", "CovFit", "fit_full_covariance",
           "initial_fit"]


def measure_covariances(diff: np.ndarray, weights: np.ndarray, max_lag: int) -> tuple[np.ndarray, int]:
    """Covariances (max_lag x max_lag, [dy, dx], units of ``diff``² / 2) of a flat-pair difference.

    Returns (C, number of pixels with weight 1).  See the module docstring.
    """
    w = (np.asarray(weights) > 0).astype(np.float64)
    d = np.where(w > 0, np.asarray(diff, dtype=np.float64), 0.0)
    n = int(w.sum())
    if n == 0:
        return np.full((max_lag, max_lag), np.nan), 0
    d = (d - d.sum() / n) * w
    ny, nx = d.shape
    L = int(max_lag)
    shape = (_fast_len(ny + L), _fast_len(nx + L))
    fd = np.fft.rfft2(d, shape)
    fw = np.fft.rfft2(w, shape)
    # correlation sums S(k) = Σ_x f(x) g(x + k) for k of either sign (index −k = shape − k)
    dd = np.fft.irfft2(fd.conj() * fd, shape)
    ww = np.fft.irfft2(fw.conj() * fw, shape)
    dw = np.fft.irfft2(fd.conj() * fw, shape)  # Σ d(x) w(x+k)
    wd = np.fft.irfft2(fw.conj() * fd, shape)  # Σ w(x) d(x+k)
    out = np.empty((L, L))
    for dy in range(L):
        for dx in range(L):
            vals = []
            for sx in ((dx,) if dx == 0 else (dx, -dx)):
                iy, ix = dy % shape[0], sx % shape[1]
                npair = round(ww[iy, ix])
                if npair < 2:
                    continue
                vals.append((dd[iy, ix] - dw[iy, ix] * wd[iy, ix] / npair) / npair)
            out[dy, dx] = 0.5 * float(np.mean(vals)) if vals else np.nan
    return out, n


def _fast_len(n: int) -> int:
    from scipy.fft import next_fast_len

    return int(next_fast_len(int(n), real=True))


def symmetrize(quarter: np.ndarray) -> np.ndarray:
    """Extend a quarter matrix on lags [0, r)² to all lags (−r, r)² by symmetry.

    >>> symmetrize(np.array([[1., 2.], [3., 4.]])).astype(int).tolist()
    [[4, 3, 4], [2, 1, 2], [4, 3, 4]]
    """
    q = np.asarray(quarter, dtype=np.float64)
    r = q.shape[0]
    full = np.zeros((2 * r - 1, 2 * r - 1))
    full[r - 1:, r - 1:] = q
    full[:r, r - 1:] = q[::-1, :]
    full[r - 1:, :r] = q[:, ::-1]
    full[:r, :r] = q[::-1, ::-1]
    return full


def convolve_full(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Full 2-d convolution of two small arrays (by FFT; scipy.signal's import costs seconds)."""
    shape = (x.shape[0] + y.shape[0] - 1, x.shape[1] + y.shape[1] - 1)
    return np.fft.irfft2(np.fft.rfft2(x, shape) * np.fft.rfft2(y, shape), shape)


def _convolve_same(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``mode="same"`` of :func:`convolve_full` (centred on ``x``)."""
    z = convolve_full(x, y)
    oy, ox = (y.shape[0] - 1) // 2, (y.shape[1] - 1) // 2
    return z[oy:oy + x.shape[0], ox:ox + x.shape[1]]


def _conv_quarter(x: np.ndarray, y: np.ndarray, r: int) -> np.ndarray:
    """(x ⊗ y) on lags [0, r)² for full symmetric matrices x, y centred at their middle."""
    z = convolve_full(x, y)
    c = z.shape[0] // 2
    return z[c:c + r, c:c + r]


def cov_model(mu: np.ndarray, a: np.ndarray, c: np.ndarray, noise: np.ndarray, gain: float) -> np.ndarray:
    """Astier+19 eq. 20: covariances (len(mu), r, r) in adu² for means ``mu`` (adu)."""
    mu = np.atleast_1d(np.asarray(mu, dtype=np.float64))
    r = a.shape[0]
    pad = np.zeros((2 * r, 2 * r))  # the convolutions reach lags up to 2r
    pad[:r, :r] = a
    asym = symmetrize(pad)
    pad[:r, :r] = c
    csym = symmetrize(pad)
    aa_full = _convolve_same(asym, asym)
    a2 = _conv_quarter(asym, asym, r)
    a3 = _conv_quarter(aa_full, asym, r)
    ac = _conv_quarter(asym, csym, r)
    x = (mu * gain)[:, None, None]
    model = x * (a[None] * x + (2.0 / 3.0) * (a2 + c)[None] * x * x
                 + ((1.0 / 3.0) * a3 + (5.0 / 6.0) * ac)[None] * x ** 3)
    model = (model + noise[None]) / (gain * gain)
    model[:, 0, 0] += mu / gain
    return model


@dataclass
class CovFit:
    """Result of :func:`fit_full_covariance` for one amp."""

    a: np.ndarray
    """1/e-, lags [0, r)²."""
    b: np.ndarray
    """1/e- (c / a; 0 where a is 0)."""
    c: np.ndarray
    noise: np.ndarray
    """e-², lags [0, r)²; noise[0, 0] is the read noise squared."""
    gain: float
    gain_err: float
    a_err: np.ndarray
    noise_err: float
    """Error of noise[0, 0] (e-²)."""
    chi2_dof: float


def _weights(cov: np.ndarray, npix: np.ndarray) -> np.ndarray:
    """1/σ(C_ij) per pair and lag (see the module docstring)."""
    c00 = np.abs(cov[:, 0, 0])[:, None, None]
    n = np.maximum(np.asarray(npix, dtype=np.float64), 1.0)[:, None, None]
    w = np.sqrt(n) / np.maximum(c00, 1e-30) * np.ones_like(cov)
    w[:, 0, 0] /= math.sqrt(2.0)
    return w


def initial_fit(mu: np.ndarray, cov: np.ndarray, w: np.ndarray, r: int) -> tuple[np.ndarray, np.ndarray, float]:
    """(a, noise, gain) with c = 0 from per-lag parabola fits, iterated on the model's higher orders."""
    a = np.zeros((r, r))
    noise = np.zeros((r, r))
    c = np.zeros((r, r))
    gain = 1.0
    old = math.inf
    for _ in range(5):
        model = cov_model(mu, a, c, noise, gain)
        a_new, noise_new, gain_new = a.copy(), noise.copy(), gain
        for i in range(r):
            for j in range(r):
                p = np.polyfit(mu, cov[:, i, j] - model[:, i, j], 2, w=w[:, i, j])
                # parabola in adu: p0 μ² + p1 μ + p2 with p0 = a (g²)/g² = a, p2 = n / g²
                a_new[i, j] += p[0]
                noise_new[i, j] += p[2] * gain * gain
                if i == 0 and j == 0:
                    gain_new = 1.0 / (1.0 / gain + p[1])
        chi2 = float(np.sum(((cov_model(mu, a_new, c, noise_new, gain_new) - cov) * w) ** 2))
        if chi2 > old:
            break
        a, noise, gain, old = a_new, noise_new, gain_new, chi2
    return a, noise, gain


def _sym_points(k: int, l: int) -> set[tuple[int, int]]:
    return {(sk * k, sl * l) for sk in (1, -1) for sl in (1, -1)}


def _shift_sums(full: np.ndarray, r: int) -> np.ndarray:
    """D[k, l, i, j] = Σ_{p ∈ sym(k, l)} full[(i, j) − p] for a full matrix centred at its middle."""
    c = full.shape[0] // 2
    out = np.zeros((r, r, r, r))
    for k in range(r):
        for l in range(r):
            for py, px in _sym_points(k, l):
                out[k, l] += full[c - py:c - py + r, c - px:c - px + r]
    return out


def _jacobian(mu: np.ndarray, a: np.ndarray, c: np.ndarray, noise: np.ndarray, g: float,
              with_b: bool) -> np.ndarray:
    """d cov_model / d params, shape (n, r, r, n_params); analytic except the gain (central difference)."""
    r = a.shape[0]
    n = len(mu)
    pad = np.zeros((2 * r, 2 * r))
    pad[:r, :r] = a
    asym = symmetrize(pad)
    pad[:r, :r] = c
    csym = symmetrize(pad)
    aa = _convolve_same(asym, asym)
    da = _shift_sums(asym, r)       # ∂(a⊗a)/∂a_kl = 2 da; ∂(a⊗c)/∂c_kl = da
    daa = _shift_sums(aa, r)        # ∂(a⊗a⊗a)/∂a_kl = 3 daa
    dc = _shift_sums(csym, r)       # ∂(a⊗c)/∂a_kl = dc
    x = mu * g
    x2, x3, x4 = (x ** 2)[:, None, None, None, None], (x ** 3)[:, None, None, None, None], (x ** 4)[:, None, None, None, None]
    eye = np.zeros((r, r, r, r))
    for k in range(r):
        for l in range(r):
            eye[k, l, k, l] = 1.0
    g2 = g * g
    ja = (x2 * eye + (2.0 / 3.0) * x3 * 2.0 * da + x4 * (daa + (5.0 / 6.0) * dc)) / g2  # (n, k, l, i, j)
    blocks = [ja.reshape(n, r * r, r, r)]
    if with_b:
        jc = ((2.0 / 3.0) * x3 * eye + (5.0 / 6.0) * x4 * da) / g2
        blocks.append(jc.reshape(n, r * r, r, r))
    jn = np.broadcast_to(eye.reshape(1, r * r, r, r) / g2, (n, r * r, r, r))
    blocks.append(jn)
    h = 1e-6 * g
    jg = (cov_model(mu, a, c, noise, g + h) - cov_model(mu, a, c, noise, g - h)) / (2 * h)
    blocks.append(jg[:, None])
    jac = np.concatenate(blocks, axis=1)  # (n, P, r, r)
    return np.moveaxis(jac, 1, -1)


def fit_full_covariance(mu: np.ndarray, cov: np.ndarray, npix: np.ndarray, r: int,
                        with_b: bool = True) -> CovFit:
    """Fit Astier+19 eq. 20 to covariances ``cov`` (n, ≥r, ≥r; adu²) at means ``mu`` (adu).

    ``with_b=False`` is cp_pipe's FULLCOVARIANCE_NO_B (c = 0).  Least squares with the
    analytic Jacobian of the model (:func:`_jacobian`), started from :func:`initial_fit`.
    """
    from scipy.optimize import least_squares

    mu = np.asarray(mu, dtype=np.float64)
    cov = np.asarray(cov, dtype=np.float64)[:, :r, :r]
    w = _weights(cov, npix)
    a0, n0, g0 = initial_fit(mu, cov, w, r)
    nn = r * r

    def unpack(p):
        a = p[:nn].reshape(r, r)
        c = p[nn:2 * nn].reshape(r, r) if with_b else np.zeros((r, r))
        off = 2 * nn if with_b else nn
        noise = p[off:off + nn].reshape(r, r)
        return a, c, noise, p[-1]

    def resid(p):
        a, c, noise, g = unpack(p)
        return ((cov_model(mu, a, c, noise, g) - cov) * w).ravel()

    def jac(p):
        a, c, noise, g = unpack(p)
        j = _jacobian(mu, a, c, noise, g, with_b) * w[..., None]
        return j.reshape(-1, j.shape[-1])

    p0 = np.concatenate([a0.ravel(), np.zeros(nn) if with_b else [], n0.ravel(), [g0]])
    scale = np.concatenate([np.full(nn, 1e-7), np.full(nn, 1e-12) if with_b else [], np.full(nn, 1.0), [0.01]])
    res = least_squares(resid, p0, jac=jac, x_scale=scale, method="lm")
    a, c, noise, g = unpack(res.x)
    dof = max(1, res.fun.size - res.x.size)
    chi2 = float(np.sum(res.fun ** 2)) / dof
    try:
        pcov = np.linalg.pinv(res.jac.T @ res.jac) * chi2
        err = np.sqrt(np.clip(np.diag(pcov), 0, None))
    except np.linalg.LinAlgError:
        err = np.full(res.x.size, np.nan)
    off = 2 * nn if with_b else nn
    with np.errstate(divide="ignore", invalid="ignore"):
        b = np.where(a != 0, c / a, 0.0)
    return CovFit(a=a, b=b, c=c, noise=noise, gain=float(g), gain_err=float(err[-1]),
                  a_err=err[:nn].reshape(r, r), noise_err=float(err[off]), chi2_dof=chi2)
