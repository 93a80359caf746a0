"""Serial CTI / deferred charge: measured from the overscan of flats, corrected in ISR (cp_pipe ``cpCti``).

**Statistics** (ip_isr ``isrStatistics`` ``doCtiStatistics``; :func:`overscan_statistics`,
run by the ISR when ``doCtiStatistics`` is on): per amp, in the image's units, the mean of
the last data column read (``LSST ISR CTI LAST MEAN <amp>``) and the means of the first
``N_OVERSCAN`` serial-overscan columns (``LSST ISR CTI OVERSCAN <k> <amp>``, k = 1..N),
after overscan subtraction, plus the gain that converts them to electrons.

**Solve** (:func:`solve_cti`; cp_pipe ``CpCtiSolveTask`` fits the same model by other
means), per amp over the flats of a ramp, in electrons.  The end of a flat row leaves an
EPER trail in the serial overscan (``cpframe/camera/cti.py``): column 1 holds
``n ε S + T (1 − r)``, column k ≥ 2 holds ``T (1 − r) r^(k−1)``, with S the last data column,
n its number of transfers, T the charge the trap held and r = exp(−1/τ).

On the flats with S ≥ ``min_trap_signal`` (the trap is full there: T = size):

1. Emission: the mean trail of columns 2..N is fitted with ``A r^(k−1)``; τ = −1/ln r.
2. Global CTI: ε = (slope of a line fitted to O_1 against S) / n: the trap adds a constant.
3. Trap size: the intercept of a line fitted to the whole trail Σ_k O_k against S, which
   is ``T (1 − r^N)`` (the trap empties into the overscan), divided by ``1 − r^N``.

**Correction** (:func:`correct_deferred_charge`, ip_isr ``DeferredChargeTask``'s trap
inverse, Snyder et al. 2021 eq. 13): for each row in read-out order, the trap occupancy
left by the previous ``num_previous_pixels`` pixels, the charge it released into each
pixel and captured from it; the pixel is corrected by ``(1 − ε)`` × (released − captured).
As in ip_isr the global CTI trail itself is not deconvolved.

The product is a ``json`` file (:func:`write_cti`).
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from cpframe.core.errors import UserInputError
from cpframe.core.files import json_ready, read_json_product, write_json
from cpframe.science.imageio import FileFormatError
from cpframe.science.configs.cti import (  # noqa: F401 (defined there, importable without the science stack)
    CtiConfig,
)

__all__ = [
    "N_OVERSCAN",
    "CtiConfig",
    "AmpCti",
    "CtiCalib",
    "CtiMeasurement",
    "overscan_statistics",
    "measure_cti",
    "solve_cti",
    "correct_deferred_charge",
    "deferred_charge_step",
    "write_cti",
    "read_cti",
    "cti_solve_task",
]

FORMAT = "cpframe-cti"
VERSION = 1
N_OVERSCAN = 10
MSG_NO_INPUTS = ("CTI solve: no flat measurements with CTI statistics. Run the ISR of the flats with "
                 "doCtiStatistics: true (pipelines/cpCti.yaml).")


@dataclass
class AmpCti:
    """Deferred-charge model of one amp (electrons)."""

    global_cti: float = 0.0
    trap_size: float = 0.0
    """e-; 0 = no trap."""
    trap_emission_time: float = 1.0
    """Transfers."""
    trap_scaling: float = 0.1
    """Linear capture: the trap fills to min(size, scaling × signal)."""
    input_gain: float = 1.0
    """e-/adu of the flats it was measured on."""
    n_transfers: int = 0
    """Transfers of the last data column."""
    signal: list[float] = field(default_factory=list)
    """Last-column mean of each flat (e-), for the report."""
    eper: list[float] = field(default_factory=list)
    """First-overscan-column mean of each flat (e-)."""
    note: str = ""


@dataclass
class CtiCalib:
    amps: dict[str, AmpCti]
    meta: dict[str, Any] = field(default_factory=dict)
    path: str = ""


@dataclass
class CtiMeasurement:
    """CTI statistics of one flat x detector (from the ISR header)."""

    exposure_id: int
    amps: dict[str, dict[str, Any]]
    """amp -> {last_mean (e-), overscan: [e-, ...], gain, n_transfers}."""


def overscan_statistics(seg: np.ndarray, amp, n: int = N_OVERSCAN) -> tuple[float, list[float]]:
    """(last data column mean, first ``n`` serial-overscan column means) of a read-out segment."""
    dr, dc = amp.data_slice
    last = float(np.mean(seg[dr, dc.stop - 1]))
    c0 = amp.serial_overscan_slice[1].start
    cols = seg[dr, c0: c0 + n]
    return last, [float(x) for x in cols.mean(axis=0)]


def measure_cti(header: Mapping[str, Any], amp_names: Sequence[str], exposure_id: int = 0) -> CtiMeasurement:
    """Read the ISR's CTI statistics cards of one flat (converted to electrons with its gains).

    Raises
    ------
    UserInputError
        The header has no CTI statistics (the ISR ran without ``doCtiStatistics``).
    """
    def header_value(h, key):
        return h.get(key) if hasattr(h, "get") else None

    out = {}
    for a in amp_names:
        last = header_value(header, f"LSST ISR CTI LAST MEAN {a}")
        if last is None:
            raise UserInputError(f"exposure {exposure_id}: no CTI statistics for amp {a} in the ISR header; run "
                                 "the ISR with doCtiStatistics: true.")
        units = str(header_value(header, "LSST ISR UNITS") or "adu")
        gain = float(header_value(header, f"LSST ISR CTI GAIN {a}") or 1.0)
        scale = 1.0 if units == "electron" else gain
        os_vals = []
        k = 1
        while (v := header_value(header, f"LSST ISR CTI OVERSCAN {k} {a}")) is not None:
            os_vals.append(float(v) * scale)
            k += 1
        out[a] = {"last_mean": float(last) * scale, "overscan": os_vals, "gain": gain,
                  "n_transfers": int(header_value(header, f"LSST ISR CTI NTRANSFER {a}") or 0)}
    return CtiMeasurement(exposure_id=int(exposure_id), amps=out)


def _solve_amp(meas: Sequence[CtiMeasurement], amp: str, cfg: CtiConfig) -> AmpCti:
    from scipy.optimize import least_squares

    s = np.array([m.amps[amp]["last_mean"] for m in meas])
    o = np.array([m.amps[amp]["overscan"][: N_OVERSCAN] for m in meas])
    n = int(meas[0].amps[amp]["n_transfers"])
    rec = AmpCti(input_gain=float(meas[0].amps[amp]["gain"]), n_transfers=n,
                 signal=[float(x) for x in s], eper=[float(x) for x in o[:, 0]])
    use = (s >= cfg.min_trap_signal) & (s <= cfg.max_signal_fraction * np.nanmax(s)) & np.isfinite(s)
    if use.sum() < 2 or o.shape[1] < 3 or n <= 0:
        rec.note = f"bad amp: {int(use.sum())} flats above {cfg.min_trap_signal} e- (need 2)"
        rec.global_cti = math.nan
        return rec
    k = np.arange(2, min(cfg.n_trail_columns, o.shape[1]) + 1)
    trail = o[use][:, k - 1].mean(axis=0)
    err = o[use][:, k - 1].std(axis=0, ddof=1) / math.sqrt(use.sum()) + 1e-3

    def resid(p):
        a, r = p
        return (a * r ** (k - 1) - trail) / err

    a0 = max(trail[0], 1e-3)
    fit = least_squares(resid, [a0 / 0.4, 0.4], bounds=([0.0, 1e-6], [np.inf, 0.999]))
    r = float(fit.x[1])
    # the first column grows with the signal by n ε per e- (the trap is full: a constant);
    # the whole trail holds n ε S + T (1 − r^N)
    slope1, _ = np.polyfit(s[use], o[use][:, 0], 1)
    total = o[use].sum(axis=1)
    slope_t, icpt_t = np.polyfit(s[use], total, 1)
    size = float(icpt_t) / (1.0 - r ** o.shape[1])
    rec.global_cti = float(slope1) / n
    rec.trap_size = max(size, 0.0)
    rec.trap_emission_time = float(-1.0 / math.log(r)) if 0 < r < 1 else math.nan
    return rec


def solve_cti(measurements: Sequence[CtiMeasurement], output_path: str | os.PathLike | None,
              config: CtiConfig | Mapping[str, Any] | None = None,
              meta: Mapping[str, Any] | None = None) -> CtiCalib:
    """Solve every amp of one detector from its flats' CTI statistics; write the json product.

    Raises
    ------
    UserInputError
        No measurements.
    """
    cfg = config if isinstance(config, CtiConfig) else CtiConfig.from_dict(config)
    if not measurements:
        raise UserInputError(MSG_NO_INPUTS)
    amps = {a: _solve_amp(measurements, a, cfg) for a in measurements[0].amps}
    md = {"OBSTYPE": "cti", "N_EXPOSURES": len(measurements),
          "INPUT_EXPIDS": sorted(int(m.exposure_id) for m in measurements)}
    md.update(dict(meta or {}))
    calib = CtiCalib(amps=amps, meta=md)
    if output_path is not None:
        write_cti(output_path, calib)
        calib.path = str(output_path)
    return calib


# --------------------------------------------------------------------------------------
# correction (ISR)
# --------------------------------------------------------------------------------------
def _capture(x: np.ndarray, rec: AmpCti) -> np.ndarray:
    return np.minimum(rec.trap_size, rec.trap_scaling * np.maximum(x, 0.0))


def correct_deferred_charge(seg: np.ndarray, rec: AmpCti, electrons_per_unit: float = 1.0,
                            num_previous_pixels: int = 6) -> None:
    """Undo the trap of one amp on its read-out-ordered segment, in place (module docstring).

    ``electrons_per_unit`` converts the segment to electrons (1 when the ISR applied gains;
    the calib's ``input_gain`` for adu).
    """
    if not (rec.trap_size > 0 and math.isfinite(rec.trap_size)) or not math.isfinite(rec.trap_emission_time):
        return
    g = float(electrons_per_unit)
    x = seg.astype(np.float64) * g
    ny, nx = x.shape
    r = math.exp(-1.0 / rec.trap_emission_time)
    cap = _capture(x, rec)
    occ = np.zeros_like(x)
    for k in range(num_previous_pixels):
        shifted = np.zeros_like(x)
        shifted[:, k + 1:] = cap[:, : nx - (k + 1)] * r ** k
        np.maximum(occ, shifted, out=occ)
    captured = np.maximum(cap - occ * r, 0.0)
    released = np.zeros_like(x)
    released[:, 1:] = occ[:, 1:] * (1.0 - r)
    a = 1.0 - (rec.global_cti if math.isfinite(rec.global_cti) else 0.0)
    x -= a * (released - captured)
    seg[...] = (x / g).astype(seg.dtype, copy=False)


def deferred_charge_step(seg: np.ndarray, amp, calib: CtiCalib | None, units: str, gain: float,
                         cards: dict) -> None:
    """The ISR's CTI step for one amp (read-out segment, in place): correct the trap when
    ``calib`` is given, then write the EPER statistics cards (image units) and the gain to
    electrons."""
    e_per_unit = 1.0 if units == "electron" else float(gain)
    if calib is not None:
        rec = calib.amps.get(amp.name)
        if rec is not None:
            g = e_per_unit if units == "electron" or gain != 1.0 else (rec.input_gain or 1.0)
            correct_deferred_charge(seg, rec, g)
            e_per_unit = g
    last, cols = overscan_statistics(seg, amp)
    cards[f"LSST ISR CTI LAST MEAN {amp.name}"] = last
    for k, v in enumerate(cols, start=1):
        cards[f"LSST ISR CTI OVERSCAN {k} {amp.name}"] = v
    cards[f"LSST ISR CTI GAIN {amp.name}"] = e_per_unit
    cards[f"LSST ISR CTI NTRANSFER {amp.name}"] = int(amp.data_slice[1].stop)


# --------------------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------------------
def write_cti(path: str | os.PathLike, calib: CtiCalib) -> Path:
    """Write the CTI calib as JSON (NaN as null), atomically."""
    doc = {"format": FORMAT, "version": VERSION, "units": "electron", "meta": json_ready(dict(calib.meta)),
           "amps": {a: json_ready(asdict(r)) for a, r in calib.amps.items()}}
    return write_json(path, doc)


def read_cti(path: str | os.PathLike) -> CtiCalib:
    """Read a cpframe CTI JSON file.

    Raises
    ------
    FileFormatError
        Unreadable, another format or version.
    """
    p = str(path)
    doc = read_json_product(p, FORMAT, VERSION, "CTI calibration", FileFormatError, "CTI")
    names = set(AmpCti.__dataclass_fields__)
    amps = {str(a): AmpCti(**{k: (math.nan if v is None else v) for k, v in r.items() if k in names})
            for a, r in doc["amps"].items()}
    return CtiCalib(amps=amps, meta=dict(doc.get("meta") or {}), path=p)


# --------------------------------------------------------------------------------------
# tasks
# --------------------------------------------------------------------------------------
def cti_solve_task(measurements: Sequence[CtiMeasurement], output_path: str | os.PathLike,
                   config: CtiConfig | Mapping[str, Any] | None = None,
                   meta: Mapping[str, Any] | None = None) -> CtiCalib:
    """cpCtiSolve for one detector -> cti json."""
    return solve_cti(measurements, output_path, config, meta=meta)
