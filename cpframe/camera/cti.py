"""Simulated serial deferred charge: global CTI plus one serial trap per amp (truth + forward model).

Model (after Snyder et al. 2021, the model ip_isr's ``DeferredChargeCalib`` describes), per
row of an amp in read-out order, in electrons, over the whole serial register (prescan,
data, serial overscan; column ``j`` is read ``j``-th and needs ``j + 1`` transfers):

1. **Trap** at the output end (every packet passes it): before pixel ``j`` arrives the
   trap releases ``q (1 − r)`` of its charge ``q`` into it, ``r = exp(−1/τ)`` (τ the emission
   time, in transfers); then it captures up to the *linear* capture level
   ``min(size, scaling × free charge)``: ``captured = clip(level, q, size) − q``.
2. **Global CTI** ε, to first order: each packet leaves ``(j + 1) ε`` of its charge to the
   next pixel read (ε ≤ 1e-5 and ≤ 600 transfers: the second order is below 2e-5).

A flat row therefore ends with an *EPER* trail in the serial overscan: the first
overscan column holds ``n ε S + T (1 − r)`` and column ``k`` ≥ 2 holds ``T (1 − r) r^(k−1)``,
with ``S`` the last data pixel, ``n`` its transfer count and ``T = min(size, scaling S)`` the
charge the trap held.

Truth per amp (``AmpTruth.cti``, ``trap_size`` (e-), ``trap_emission_time`` (transfers),
``trap_scaling``), drawn from their own ``SeedSequence`` stream when the ``cti`` effect is
on (its value is the nominal ε; ``True`` = 3e-6): ε = value × U(0.5, 1.5), size U(20, 60) e-,
τ U(0.5, 1.5), scaling 0.1.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["TAG_CTI", "draw_amp_cti", "deferred_charge", "apply_deferred_charge"]

TAG_CTI = 0x6374_6921
TRAP_SCALING = 0.1


def draw_amp_cti(seed: int, detector_id: int, n_amps: int, strength: float) -> list[tuple[float, float, float, float]]:
    """(cti, trap size e-, emission time, scaling) per amp; zeros when ``strength`` is 0.

    >>> draw_amp_cti(1, 4, 2, 0.0)
    [(0.0, 0.0, 1.0, 0.0), (0.0, 0.0, 1.0, 0.0)]
    """
    if not strength:
        return [(0.0, 0.0, 1.0, 0.0)] * n_amps
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), TAG_CTI, int(detector_id)]))
    out = []
    for _ in range(n_amps):
        cti = float(strength) * float(rng.uniform(0.5, 1.5))
        size = float(rng.uniform(20.0, 60.0))
        tau = float(rng.uniform(0.5, 1.5))
        out.append((cti, size, tau, TRAP_SCALING))
    return out


def deferred_charge(rows: np.ndarray, cti: float, size: float, tau: float, scaling: float) -> np.ndarray:
    """Forward model on rows in read-out order (e-, float64 copy): trap, then global CTI."""
    out = np.array(rows, dtype=np.float64, copy=True)
    ny, nx = out.shape
    if size > 0 and scaling > 0:
        r = math.exp(-1.0 / tau)
        q = np.zeros(ny)
        for j in range(nx):
            free = out[:, j]
            released = q * (1.0 - r)
            q -= released
            level = np.minimum(size, scaling * np.maximum(free, 0.0))
            captured = np.clip(level, q, size) - q
            q += captured
            out[:, j] = free - captured + released
    if cti > 0:
        n = np.arange(1, nx + 1, dtype=np.float64) * cti
        lost = out * n[None, :]
        out -= lost
        out[:, 1:] += lost[:, :-1]
    return out


def apply_deferred_charge(e: np.ndarray, amp, cti: float, size: float, tau: float,
                          scaling: float) -> tuple[np.ndarray, np.ndarray]:
    """Deferred charge of one amp's data (e-, assembled orientation).

    Returns the data after transfer (float32, assembled orientation) and the charge that
    trailed into the serial overscan (e-, read-out frame, ``(data_rows, overscan cols)``).
    """
    def orient(x):
        if amp.flip_x:
            x = x[:, ::-1]
        if amp.flip_y:
            x = x[::-1, :]
        return x

    rows = np.zeros((amp.data_rows, amp.raw_shape[1]))
    dcols = amp.data_slice[1]
    rows[:, dcols] = orient(e)
    out = deferred_charge(rows, cti, size, tau, scaling)
    data = orient(out[:, dcols]).astype(np.float32)
    trail = out[:, amp.serial_overscan_slice[1]]
    return data, trail
