"""Linearizer: per-amp non-linearity correction solved from a flat-pair ramp (cp_pipe ``cpLinearizer``).

Input: the PTC-style pair measurements of one detector (:class:`cpframe.science.ptc.PtcPairMeasurement`,
bootstrap ISR in adu): per pair and amp the mean signal ``μ`` (adu) and the exposure
time ``t`` (s), which is proportional to the charge collected (cp_pipe's ``usePhotodiode``
is off: the simulator's and a stable dome lamp's flux is constant).

Per amp (docs/algorithms.md "Linearizer"):

1. **Turnoff** (cp_pipe ``_computeTurnoffAndMax``): slope ``a = Σt / Σ(t²/μ)`` over the
   points with μ ≥ ``minSignalFitLinearityTurnoff``; relative residuals ``(μ − a t)/μ`` minus
   their median; the turnoff is the largest μ whose residual is below
   ``maxFracLinearityDeviation`` (1 %).  Points above it are not fitted.
2. ``Polynomial`` / ``Squared`` (cp_pipe ``LinearitySolveTask``): points with
   ``minLinearAdu`` < μ < ``maxLinearAdu``; linear fit μ ≈ k0 + k1 t; points further than
   ``nSigmaClipLinear``·√μ from it dropped; polynomial fit μ = Σ k_j x^j of order
   ``polynomialOrder`` against x = k0 + k1 t.  Correction coefficients ``c_(j−2) = −k_j / k1^j``
   (Squared keeps c_0 only), applied as ``m + Σ c_i m^(i+2)``.
3. ``Spline`` (cp_pipe Astier spline model): nodes ``linspace(0, max μ + 1, splineKnots)``;
   model ``μ_i = S(μ_i) + k t_i + O`` with S a cubic spline through (node, value), S(0) = 0,
   a constant O (``doSplineFitOffset``: light leak or residual bias) and the condition that
   S averages 0 over [0, turnoff] (otherwise S is degenerate with the gain).  The model is
   linear in (values, k, O): one weighted least-squares solve (weights 1/μ: relative
   residuals) per iteration, with up to ``splineFitMaxRejectionPerIteration`` points beyond
   ``nSigmaClipLinear`` × MAD-sigma rejected per iteration.  Applied as ``m − S(m)`` with m
   clipped to the node range.

Deliberate difference: the spline is a not-a-knot cubic spline (exact for cubic curves and
linear in the node values, so the fit is a linear solve), where ip_isr evaluates an Akima
spline through the same nodes.

The product is a ``json`` file (:func:`write_linearizer`), one record per amp: type,
coefficients, turnoff, the fit's inputs and residuals (for the report's residual plot).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from cpframe.core.errors import ConfigError, UserInputError
from cpframe.core.files import json_ready, write_json
from cpframe.science.imageio import FileFormatError
from cpframe.science.configs.linearity import (  # noqa: F401 (defined there, importable without the science stack)
    LINEARITY_TYPES,
    LinearityConfig,
    MSG_BAD_VALUE,
    MSG_UNKNOWN_KEYS,
)

__all__ = [
    "LINEARITY_TYPES",
    "LinearityConfig",
    "AmpLinearity",
    "Linearizer",
    "solve_linearity",
    "apply_linearity",
    "read_linearizer",
    "write_linearizer",
    "linearizer_from_mapping",
    "linearity_turnoff",
    "linearity_solve_task",
]

FORMAT = "cpframe-linearizer"
VERSION = 1

MSG_NO_NORMALIZATION = ("linearity solve: useFocalPlaneNormalization is true but no normalisation was given; "
                        "connect a linearityNormalize output (cp_pipe inputNormalization) or set it false.")
MSG_NO_PAIRS = ("linearity solve: no pair measurements. Give the flat-pair ramp of one detector "
                "(ptc_extract_task on pairs of equal exposure time).")


@dataclass
class AmpLinearity:
    """The correction of one amplifier (adu in, adu out) and the data it was fitted on."""

    type: str
    """Polynomial, Squared, Spline or None."""
    coeffs: list[float]
    """Polynomial/Squared: c_0, c_1... of m + Σ c_i m^(i+2); Spline: nodes then values (adu)."""
    turnoff: float = math.nan
    """Largest mean (adu) within max_frac_linearity_deviation of linear."""
    max_signal: float = math.nan
    """Median of the means within 1 % of the largest (adu): where the amp saturates."""
    fit_params: list[float] = field(default_factory=list)
    """Polynomial: k_0..k_n of μ = P(x); Spline: [k (adu/s), offset O (adu)]."""
    abscissa: list[float] = field(default_factory=list)
    """Exposure time of each input pair (s)."""
    ordinate: list[float] = field(default_factory=list)
    """Mean of each input pair (adu, uncorrected)."""
    mask: list[bool] = field(default_factory=list)
    """Points used in the final fit."""
    residuals: list[float] = field(default_factory=list)
    """(corrected − linear fit)/corrected for each point (NaN where unmasked or unusable)."""
    residual_sigma_mad: float = math.nan
    """MAD-sigma of the residuals of the masked points (relative)."""
    note: str = ""
    """Why the amp has no correction (NaN coefficients), if it has none."""
    input_gain: float = math.nan
    """e-/adu: the PTC fit (EXPAPPROXIMATION) of the same pairs (cp_pipe ``inputGain``)."""
    input_noise: float = math.nan
    """e-: read noise of the same fit."""
    exposure_ids: list[list[int]] = field(default_factory=list)
    """The two exposure ids of each point (pair), in the order of ``abscissa``."""
    input_normalization: list[float] = field(default_factory=list)
    """The focal-plane normalisation each point's exposure time was multiplied by (1 without one)."""


@dataclass
class Linearizer:
    """A detector's linearizer: per-amp corrections plus metadata."""

    amps: dict[str, AmpLinearity]
    meta: dict[str, Any] = field(default_factory=dict)
    path: str = ""

    def correct(self, data: np.ndarray, amp: str, gain: float | None = None) -> None:
        """Correct ``data`` of one amp in place (adu; with ``gain`` the data are in electrons)."""
        rec = self.amps.get(amp)
        if rec is None:
            return
        apply_linearity(data, rec, gain)

    def gain_noise(self, amp: str) -> tuple[float, float]:
        """(gain e-/adu, read noise e-) the linearizer measured for ``amp`` (ISR ``useGainsFrom: LINEARIZER``).

        Raises
        ------
        UserInputError
            The amp is missing or has no finite gain.
        """
        rec = self.amps.get(amp)
        if rec is None or not math.isfinite(rec.input_gain) or rec.input_gain <= 0:
            raise UserInputError(f"linearizer {self.path or ''}: no gain for amp {amp}; rebuild it with cpframe "
                                 "(it fits the gains of its ramp) or use useGainsFrom: PTC.")
        return float(rec.input_gain), float(rec.input_noise)

    def function(self, amp: str):
        """The correction of one amp as a function of measured adu (float64 copy)."""
        def f(m):
            out = np.array(m, dtype=np.float64, copy=True)
            apply_linearity(out, self.amps[amp])
            return out
        return f


# --------------------------------------------------------------------------------------
# application (ISR)
# --------------------------------------------------------------------------------------
def _spline(nodes: np.ndarray, values: np.ndarray):
    from scipy.interpolate import CubicSpline

    if len(nodes) < 4:  # not-a-knot needs 4 points; fall back to a natural spline
        return CubicSpline(nodes, values, bc_type="natural")
    return CubicSpline(nodes, values, bc_type="not-a-knot")


def _spline_parts(coeffs: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    c = np.asarray(coeffs, dtype=np.float64)
    nodes, values = np.split(c, 2)
    values = values - values[0]  # anchored at 0 (ip_isr removes an offset at the first node)
    if nodes[0] != 0.0:
        nodes = np.concatenate(([0.0], nodes))
        values = np.concatenate(([0.0], values))
    return nodes, values


def apply_linearity(data: np.ndarray, rec: AmpLinearity, gain: float | None = None) -> None:
    """Apply one amp's correction to ``data`` in place (ip_isr ``Linearize*`` classes).

    ``gain`` (e-/adu): the data are in electrons; they are corrected in adu and scaled back.
    Non-finite coefficients set the data to NaN (the amp cannot be corrected).
    """
    if rec.type == "None" or not rec.coeffs:
        return
    g = float(gain) if gain else 1.0
    coeffs = np.asarray(rec.coeffs, dtype=np.float64)
    if not np.all(np.isfinite(coeffs)):
        data[...] = np.nan
        return
    if g != 1.0:
        data /= np.float32(g) if data.dtype == np.float32 else g
    if rec.type in ("Polynomial", "Squared"):
        use = coeffs[:1] if rec.type == "Squared" else coeffs
        if np.any(use):
            x = data.astype(np.float64)
            corr = np.zeros_like(x)
            for order, c in enumerate(use, start=2):
                corr += c * x ** order
            data += corr.astype(data.dtype, copy=False)
    elif rec.type == "Spline":
        nodes, values = _spline_parts(coeffs)
        spl = _spline(nodes, values)
        x = np.clip(data.astype(np.float64), nodes[0], nodes[-1] - 0.1)
        data -= spl(x).astype(data.dtype, copy=False)
    else:
        raise ConfigError(f"linearizer type {rec.type!r} cannot be applied; types: {', '.join(LINEARITY_TYPES)}.")
    if g != 1.0:
        data *= np.float32(g) if data.dtype == np.float32 else g


# --------------------------------------------------------------------------------------
# solve
# --------------------------------------------------------------------------------------
def linearity_turnoff(t: np.ndarray, mu: np.ndarray, config: LinearityConfig) -> tuple[float, float]:
    """(turnoff, max_signal) in adu for one amp (cp_pipe ``_computeTurnoffAndMax``, one group)."""
    ok = np.isfinite(t) & np.isfinite(mu) & (mu > 0) & (t > 0)
    if ok.sum() < 2:
        return math.nan, math.nan
    fit = ok & (mu >= config.min_signal_fit_linearity_turnoff)
    turnoff = math.nan
    while fit.sum() >= 4:
        a = float(np.sum(t[fit]) / np.sum(t[fit] ** 2 / mu[fit]))
        with np.errstate(invalid="ignore", divide="ignore"):
            resid = np.where(ok, (mu - a * t) / mu, np.nan)
        resid -= np.nanmedian(resid)
        good = ok & (np.abs(np.nan_to_num(resid, nan=np.inf)) < config.max_frac_linearity_deviation)
        if good.sum() > 4:
            turnoff = float(mu[good].max())
            break
        idx = np.flatnonzero(fit)
        fit[idx[np.argmax(np.abs(resid[fit]))]] = False
    if not math.isfinite(turnoff):
        turnoff = float(mu[ok].max()) if fit.any() else math.nan
    top = float(np.nanmax(mu[ok]))
    high = ok & (mu > (1.0 - config.max_frac_linearity_deviation) * top)
    return turnoff, float(np.median(mu[high]))


def _mad_sigma(x: np.ndarray) -> float:
    x = x[np.isfinite(x)]
    if x.size == 0:
        return math.nan
    return float(1.4826 * np.median(np.abs(x - np.median(x))))


def _solve_polynomial(t, mu, mask, config: LinearityConfig) -> tuple[list[float], list[float], np.ndarray]:
    order = 2 if config.linearity_type == "Squared" else int(config.polynomial_order)
    w = 1.0 / np.sqrt(np.abs(mu[mask]))
    k1, k0 = np.polyfit(t[mask], mu[mask], 1, w=w)
    lin = k0 + k1 * t
    mask = mask & (np.abs(mu - lin) < config.n_sigma_clip_linear * np.sqrt(np.abs(mu)))
    if mask.sum() < order + 1:
        raise _BadAmp("not enough points near the linear fit")
    poly = np.polyfit(lin[mask], mu[mask], order, w=1.0 / np.sqrt(np.abs(mu[mask])))[::-1]  # k_0..k_n
    p1 = poly[1]
    coeffs = [-poly[j] / p1 ** j for j in range(2, order + 1)]
    if config.linearity_type == "Squared":
        coeffs = coeffs[:1]
    return coeffs, [float(x) for x in poly], mask


#: With ``splineNodeSize``: the fewest fitted points per node interval (the node size widens on a sparse ramp).
MIN_POINTS_PER_NODE = 3


def _solve_spline(t, mu, mask, turnoff, config: LinearityConfig) -> tuple[list[float], list[float], np.ndarray]:
    top = float(mu[mask].max()) + 1.0
    knots = int(config.spline_knots)
    if config.spline_node_size > 0:  # cp_pipe's absolute spline: nodes at least this far apart
        knots = max(3, math.floor(top / float(config.spline_node_size)) + 1)
        # ... but never more nodes than the ramp constrains: cp_pipe's node sizes assume ramps of hundreds
        # of exposures; on a sparse ramp each interval keeps MIN_POINTS_PER_NODE fitted points (docs)
        knots = min(knots, max(4, int(mask.sum()) // MIN_POINTS_PER_NODE + 1))
    nodes = np.linspace(0.0, top, knots)
    n = len(nodes)
    eye = np.eye(n)
    spl = _spline(nodes, eye.T)  # vector-valued: column j is the basis function of node j

    def basis(x):
        return np.asarray(spl(np.clip(x, nodes[0], nodes[-1])))  # (len(x), n)

    grid = np.linspace(0.0, turnoff if math.isfinite(turnoff) else nodes[-1], 100)
    constraint = basis(grid).mean(axis=0)[1:]  # mean of S over [0, turnoff] = 0 (node 0 fixed at 0)
    w_all = np.zeros_like(mu)
    w_all[mask] = 1.0
    params = None
    max_rej = int(config.spline_fit_max_rejection_per_iteration)
    for it in range(int(config.spline_fit_max_iter)):
        use = w_all > 0
        if use.sum() < n + 2:
            raise _BadAmp(f"{int(use.sum())} points for a {n}-node spline")
        a = np.column_stack([basis(mu[use])[:, 1:], t[use]] + ([np.ones(use.sum())] if config.do_spline_fit_offset
                                                                   else []))
        wt = 1.0 / mu[use]
        lhs = a * wt[:, None]
        rhs = mu[use] * wt
        big = 1e3 * len(rhs) / float(np.mean(mu[use]))
        row = np.concatenate([constraint, np.zeros(a.shape[1] - (n - 1))]) * big
        params = np.linalg.lstsq(np.vstack([lhs, row]), np.concatenate([rhs, [0.0]]), rcond=None)[0]
        full = np.column_stack([basis(mu)[:, 1:], t] + ([np.ones_like(t)] if config.do_spline_fit_offset else []))
        with np.errstate(invalid="ignore", divide="ignore"):
            res = (mu - full @ params) / mu
        # the MAD of least-squares residuals is low by sqrt((N - p)/N) (p fitted parameters)
        n_use, n_par = int(use.sum()), a.shape[1]
        sig = _mad_sigma(res[use]) * math.sqrt(n_use / max(n_use - n_par, 1))
        absr = np.where(use, np.abs(res), 0.0)
        cut = config.n_sigma_clip_linear * sig
        if n_use > max_rej:
            cut = max(np.sort(absr[use])[-max_rej], cut)
        out = use & (absr > cut)
        if n_use - int(out.sum()) < n_par + 3:  # keep enough points to constrain every node
            out[:] = False
        if out.any():
            w_all[out] = 0.0
        elif it + 1 >= int(config.spline_fit_min_iter):
            break
    values = np.concatenate([[0.0], params[: n - 1]])
    k = float(params[n - 1])
    offset = float(params[n]) if config.do_spline_fit_offset else 0.0
    return [float(x) for x in (*nodes, *values)], [k, offset], w_all > 0


class _BadAmp(Exception):
    pass


def _solve_amp(t: np.ndarray, mu: np.ndarray, config: LinearityConfig, ids: Sequence[Sequence[int]] = (),
               norm: np.ndarray | None = None) -> AmpLinearity:
    order = np.argsort(np.where(np.isfinite(mu), mu, np.inf), kind="stable")
    t, mu = t[order], mu[order]
    norm = np.ones_like(t) if norm is None else np.asarray(norm, dtype=np.float64)[order]
    rec = AmpLinearity(type=config.linearity_type, coeffs=[], abscissa=[float(x) for x in t],
                       ordinate=[float(x) for x in mu], mask=[False] * len(mu),
                       residuals=[math.nan] * len(mu),
                       exposure_ids=[[int(e) for e in ids[i]] for i in order] if len(ids) else [],
                       input_normalization=[float(x) for x in norm])
    nan_coeffs = ([math.nan] * (2 * int(config.spline_knots)) if config.linearity_type == "Spline"
                  else [math.nan] * (1 if config.linearity_type == "Squared" else int(config.polynomial_order) - 1))
    if config.linearity_type == "None":
        rec.coeffs = [0.0]
        return rec
    turnoff, max_signal = linearity_turnoff(t, mu, config)
    rec.turnoff, rec.max_signal = turnoff, max_signal
    ok = np.isfinite(t) & np.isfinite(mu) & (mu > config.min_linear_adu) & (t > 0)
    if math.isfinite(turnoff):
        ok &= mu <= turnoff
    try:
        if not math.isfinite(turnoff):
            raise _BadAmp("no usable turnoff")
        if config.linearity_type == "Spline":
            coeffs, params, mask = _solve_spline(t, mu, ok, turnoff, config)
        else:
            mask = ok & (mu < config.max_linear_adu)
            if mask.sum() < 3:
                raise _BadAmp(f"{int(mask.sum())} points between minLinearAdu and maxLinearAdu")
            coeffs, params, mask = _solve_polynomial(t, mu, mask, config)
    except (_BadAmp, np.linalg.LinAlgError, ValueError) as err:
        rec.coeffs = nan_coeffs
        rec.note = f"bad amp: {err}"
        return rec
    rec.coeffs, rec.fit_params, rec.mask = coeffs, params, [bool(x) for x in mask]
    # residuals of the corrected means about a line through the origin (cp_pipe fitResiduals)
    corrected = np.array(mu, dtype=np.float64)
    apply_linearity(corrected, rec)
    fin = mask & np.isfinite(corrected)
    if fin.sum() >= 2:
        if config.linearity_type == "Spline":
            offset = params[1]
            corrected_lin = corrected - offset
        else:
            corrected_lin = corrected
        slope, icpt = np.polyfit(t[fin], corrected_lin[fin], 1, w=1.0 / np.sqrt(np.abs(corrected_lin[fin])))
        with np.errstate(invalid="ignore", divide="ignore"):
            res = (corrected_lin - (slope * t + icpt)) / corrected_lin
        rec.residuals = [float(r) if ok_i else math.nan for r, ok_i in zip(res, np.isfinite(res) & (mu > 0))]
        rec.residual_sigma_mad = _mad_sigma(res[fin])
    return rec


def _ramp_gains(measurements: Sequence[Any]) -> tuple[dict[str, float], dict[str, float]]:
    """Gains and read noise of the ramp's pairs (cp_pipe's cpLinearizerPtcSolve); empty without variances."""
    from cpframe.science.ptc import PtcConfig, solve_ptc

    if not all("var" in rec for m in measurements for rec in m.amps.values()):
        return {}, {}
    try:
        res = solve_ptc(measurements, None, PtcConfig())
    except (UserInputError, ValueError, np.linalg.LinAlgError):
        return {}, {}
    return dict(res.gain), dict(res.noise)


def solve_linearity(measurements: Sequence[Any], output_path: str | os.PathLike | None,
                    config: LinearityConfig | Mapping[str, Any] | None = None,
                    meta: Mapping[str, Any] | None = None,
                    normalization: Mapping[int, float] | None = None) -> Linearizer:
    """Solve every amp of one detector from its pair measurements; write the json product.

    Parameters
    ----------
    measurements : sequence of PtcPairMeasurement
        One per flat pair (``exposure_time``, ``amps[amp]['mean']`` in adu).
    output_path : path-like or None
        Where to write the linearizer (json); None = do not write.
    config : LinearityConfig or mapping
    meta : mapping, optional
        Header-like metadata (INSTRUME, DETECTOR, DETNAME, CAMSCALE...).
    normalization : mapping, optional
        Exposure id -> focal-plane normalisation (needed with ``useFocalPlaneNormalization``): each
        pair's exposure time is multiplied by the mean of its two exposures' values (1 where absent).

    Raises
    ------
    UserInputError
        No measurements; ``useFocalPlaneNormalization`` without a normalisation.
    """
    cfg = config if isinstance(config, LinearityConfig) else LinearityConfig.from_dict(config)
    if not measurements:
        raise UserInputError(MSG_NO_PAIRS)
    if cfg.use_focal_plane_normalization and normalization is None:
        raise UserInputError(MSG_NO_NORMALIZATION)
    amps = list(measurements[0].amps)
    ids = [tuple(int(e) for e in getattr(m, "exposure_ids", ())) for m in measurements]
    norm = np.ones(len(measurements))
    if cfg.use_focal_plane_normalization:
        norm = np.array([np.mean([float(normalization.get(e, 1.0)) for e in pair]) if pair else 1.0
                         for pair in ids])
    t = np.array([float(m.exposure_time) for m in measurements], dtype=np.float64) * norm
    out: dict[str, AmpLinearity] = {}
    gains, noises = _ramp_gains(measurements)
    for a in amps:
        mu = np.array([float(m.amps[a]["mean"]) for m in measurements], dtype=np.float64)
        out[a] = _solve_amp(t, mu, cfg, ids if all(ids) else (), norm)
        out[a].input_gain, out[a].input_noise = gains.get(a, math.nan), noises.get(a, math.nan)
    md = {"OBSTYPE": "linearizer", "LINEARITY_TYPE": cfg.linearity_type, "NPAIRS": len(measurements),
          "FPNORMALIZED": bool(cfg.use_focal_plane_normalization),
          "INPUT_EXPIDS": sorted({int(e) for m in measurements for e in getattr(m, "exposure_ids", ())})}
    md.update(dict(meta or {}))
    lin = Linearizer(amps=out, meta=md)
    if output_path is not None:
        write_linearizer(output_path, lin)
        lin.path = str(output_path)
    return lin


# --------------------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------------------
def write_linearizer(path: str | os.PathLike, lin: Linearizer) -> Path:
    """Write a linearizer as JSON (NaN as null), atomically (temporary name + rename)."""
    doc = {"format": FORMAT, "version": VERSION, "meta": json_ready(dict(lin.meta)),
           "amps": {a: json_ready(asdict(r)) for a, r in lin.amps.items()}}
    return write_json(path, doc)


def _nan(v):
    if v is None:
        return math.nan
    if isinstance(v, list):
        return [_nan(x) for x in v]
    return v


def linearizer_from_mapping(data: Mapping[str, Any], path: str = "") -> Linearizer:
    """A :class:`Linearizer` from a parsed document: cpframe's format, or the simple
    ``{amp: c}`` / ``{coefficients: {amp: c}}`` mapping of a Squared correction ``m + c m²``.

    Raises
    ------
    FileFormatError
        Anything else.
    """
    where = path or "linearizer"
    if data.get("format") == FORMAT:
        if data.get("version") != VERSION:
            raise FileFormatError(f"{where}: linearizer version {data.get('version')!r}; this cpframe reads "
                                  f"version {VERSION}.")
        names = {f.name for f in fields(AmpLinearity)}
        amps = {}
        for a, rec in dict(data.get("amps") or {}).items():
            rec = {k: _nan(v) for k, v in dict(rec).items() if k in names}
            amps[str(a)] = AmpLinearity(**rec)
        return Linearizer(amps=amps, meta=dict(data.get("meta") or {}), path=path)
    simple = data.get("coefficients", data)
    try:
        amps = {str(a): AmpLinearity(type="Squared", coeffs=[float(c)]) for a, c in dict(simple).items()}
    except (TypeError, ValueError) as err:
        raise FileFormatError(f"{where}: not a linearizer ({FORMAT} JSON, or a mapping amp -> squared "
                              f"coefficient): {err}") from None
    return Linearizer(amps=amps, meta={}, path=path)


def read_linearizer(path: str | os.PathLike) -> Linearizer:
    """Read a linearizer (cpframe JSON, or a YAML/JSON ``{amp: c}`` mapping).

    Raises
    ------
    FileFormatError
        Unreadable or not a linearizer.
    """
    import yaml

    p = str(path)
    try:
        text = Path(p).read_text()
        data = json.loads(text) if p.endswith(".json") else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as err:
        raise FileFormatError(f"{p}: cannot read the linearizer: {err}") from None
    if not isinstance(data, Mapping):
        raise FileFormatError(f"{p}: not a linearizer (expected a mapping).")
    return linearizer_from_mapping(data, p)


# --------------------------------------------------------------------------------------
# tasks: what the pipeline kinds and the drivers call
# --------------------------------------------------------------------------------------
def linearity_solve_task(measurements: Sequence[Any], output_path: str | os.PathLike,
                         config: LinearityConfig | Mapping[str, Any] | None = None,
                         meta: Mapping[str, Any] | None = None,
                         normalization: Mapping[int, float] | None = None) -> Linearizer:
    """cpLinearizerSolve for one detector: pair measurements -> linearizer json (see :func:`solve_linearity`)."""
    return solve_linearity(measurements, output_path, config, meta=meta, normalization=normalization)
