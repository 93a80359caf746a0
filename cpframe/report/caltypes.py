"""Report figures of the linearizer, crosstalk and CTI products (one PNG per detector).

* linearizer: residual non-linearity (%) of each amp's ramp against the mean signal, before
  (raw ramp about a line fitted below 20 % of the turnoff) and after the correction;
* crosstalk: the coefficient matrix C[target, source] as a heat map of log10 |C|, with
  coefficients the solve found insignificant (set to 0) left blank;
* CTI: the first serial-overscan column (EPER) against the last data column's signal, per
  amp, with each amp's fitted model n ε S + size (1 − r);
* BFK: the detector kernel as an image, and cuts through its centre along rows and columns
  with every amp's kernel (invalid amps dashed);
* electrostatic brighter-fatter (``electroBfDistortionMatrix``): the measured mean ``a`` matrix of the PTC
  (1/e-, with the amps' error of the mean) and the fitted electrostatic model, |a| against the lag distance,
  and the residual (measured − model) / σ per lag;
* gain correction: the adjustment (%) of each amp laid out as the amps sit on the detector,
  and per amp the new / reference flat ratio before and after the correction (cp_pipe's
  "flat ratio uncorrected / corrected" plot, per amp).

Matplotlib through ``Figure`` + Agg (no pyplot state); files written under a temporary name
and renamed.
"""

from __future__ import annotations

import math
import os
import threading
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

__all__ = ["CALTYPE_PRODUCTS", "render_linearity_png", "render_crosstalk_png", "render_cti_png", "render_bfk_png",
           "render_electrostatic_png", "render_gain_correction_png", "caltype_figures"]

#: Product dataset type -> (renderer of one file, caption).
CALTYPE_PRODUCTS: dict[str, tuple[Callable[[str, Any, str], Path], str]] = {}


def _figure(w: float, h: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h), dpi=110)


def _save(fig, path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    # a plain open() (not mkstemp's 0600) so the file honours the umask
    tmp = out.with_name(f".{out.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        fig.savefig(tmp, format="png")
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


def render_linearity_png(path_in: str, path: str | os.PathLike, title: str) -> Path:
    """Residual non-linearity (%) vs mean signal (adu), every amp, raw and corrected."""
    from matplotlib import colormaps

    from cpframe.science.linearity import apply_linearity, read_linearizer

    lin = read_linearizer(path_in)
    fig = _figure(7.0, 4.0)
    axes = (fig.add_axes((0.08, 0.13, 0.4, 0.75)), fig.add_axes((0.57, 0.13, 0.4, 0.75)))
    cmap = colormaps["viridis"]
    n = max(len(lin.amps), 1)
    for i, (amp, rec) in enumerate(sorted(lin.amps.items())):
        mu = np.asarray(rec.ordinate, dtype=float)
        t = np.asarray(rec.abscissa, dtype=float)
        mask = np.asarray(rec.mask, dtype=bool) if rec.mask else np.zeros(mu.size, bool)
        if mask.sum() < 3:
            continue
        corrected = mu.copy()
        apply_linearity(corrected, rec)
        low = mask & (mu < 0.2 * (rec.turnoff if math.isfinite(rec.turnoff) else mu[mask].max()))
        if low.sum() < 2:
            low = mask
        for ax, y in ((axes[0], mu), (axes[1], corrected)):
            ref = low if ax is axes[0] else mask
            if not np.all(np.isfinite(y[ref])):
                continue
            slope, icpt = np.polyfit(t[ref], y[ref], 1)
            with np.errstate(invalid="ignore", divide="ignore"):
                res = 100.0 * (y / (slope * t + icpt) - 1.0)
            ax.plot(mu[mask], res[mask], ".-", color=cmap(i / n), ms=2.5, lw=0.5, label=amp if ax is axes[1] else None)
    for ax, sub in zip(axes, ("raw ramp (line through the low points)", "after the linearizer")):
        ax.set_xlabel("mean signal (adu)", fontsize=8)
        ax.set_ylabel("residual (%)", fontsize=8)
        ax.set_title(sub, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    axes[1].axhline(0.1, color="k", ls="--", lw=0.6)
    axes[1].axhline(-0.1, color="k", ls="--", lw=0.6)
    axes[1].legend(fontsize=4.5, ncol=4, loc="lower left")
    fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def render_crosstalk_png(path_in: str, path: str | os.PathLike, title: str) -> Path:
    """Heat map of log10 |C[target, source]|; insignificant (zeroed) coefficients blank."""
    from cpframe.science.crosstalk import read_crosstalk

    cal = read_crosstalk(path_in)
    c = np.abs(np.asarray(cal.coeffs, dtype=float))
    with np.errstate(divide="ignore"):
        img = np.where(c > 0, np.log10(np.where(c > 0, c, 1.0)), np.nan)
    fig = _figure(5.2, 4.6)
    ax = fig.add_axes((0.14, 0.12, 0.7, 0.78))
    im = ax.imshow(img, origin="upper", cmap="magma", interpolation="nearest")
    n = len(cal.amps)
    ax.set_xticks(range(n), cal.amps, rotation=90, fontsize=6)
    ax.set_yticks(range(n), cal.amps, fontsize=6)
    ax.set_xlabel("source amp", fontsize=8)
    ax.set_ylabel("target amp", fontsize=8)
    ax.set_title(title, fontsize=9)
    cax = fig.add_axes((0.86, 0.12, 0.03, 0.78))
    cb = fig.colorbar(im, cax=cax)
    cb.set_label("log10 |coefficient| (adu/adu)", fontsize=7)
    cb.ax.tick_params(labelsize=6)
    return _save(fig, path)


def render_cti_png(path_in: str, path: str | os.PathLike, title: str) -> Path:
    """EPER (first overscan column, e-) vs last-column signal (e-) per amp, with the fitted model."""
    from matplotlib import colormaps

    from cpframe.science.cti import read_cti

    cal = read_cti(path_in)
    fig = _figure(6.0, 4.0)
    ax = fig.add_axes((0.12, 0.12, 0.85, 0.8))
    cmap = colormaps["viridis"]
    n = max(len(cal.amps), 1)
    for i, (amp, rec) in enumerate(sorted(cal.amps.items())):
        s = np.asarray(rec.signal, dtype=float)
        o = np.asarray(rec.eper, dtype=float)
        ok = np.isfinite(s) & np.isfinite(o) & (s > 0)
        if not ok.any():
            continue
        col = cmap(i / n)
        ax.plot(s[ok], o[ok], ".", color=col, ms=3)
        if math.isfinite(rec.global_cti) and math.isfinite(rec.trap_emission_time):
            x = np.linspace(0, s[ok].max(), 50)
            r = math.exp(-1.0 / rec.trap_emission_time)
            trap = np.minimum(rec.trap_size, rec.trap_scaling * x) * (1 - r)
            ax.plot(x, rec.n_transfers * rec.global_cti * x + trap, "-", color=col, lw=0.6,
                    label=f"{amp} ε={rec.global_cti:.1e}" if i < 16 else None)
    ax.set_xlabel("last data column (e-)", fontsize=8)
    ax.set_ylabel("first overscan column (e-)", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=4.5, ncol=3, loc="upper left")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def render_bfk_png(path_in: str, path: str | os.PathLike, title: str) -> Path:
    """Detector kernel image and row/column cuts of every amp's kernel (1/e- units of ip_isr)."""
    from cpframe.science.bfk import read_bfk

    cal = read_bfk(path_in)
    k = cal.det_kernel
    c = k.shape[0] // 2
    fig = _figure(7.5, 3.4)
    ax = fig.add_axes((0.05, 0.14, 0.36, 0.72))
    im = ax.imshow(k, origin="lower", cmap="viridis", extent=(-c - 0.5, c + 0.5, -c - 0.5, c + 0.5))
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02).ax.tick_params(labelsize=6)
    ax.set_title("detector kernel", fontsize=8)
    ax.set_xlabel("column lag", fontsize=7)
    ax.set_ylabel("row lag", fontsize=7)
    ax.tick_params(labelsize=6)
    ax2 = fig.add_axes((0.56, 0.14, 0.42, 0.72))
    lags = np.arange(-c, c + 1)
    for amp, ak in sorted(cal.amp_kernels.items()):
        ls = "-" if cal.valid.get(amp) else "--"
        ax2.plot(lags, ak[c, :], ls, color="tab:blue", lw=0.5, alpha=0.5)
        ax2.plot(lags, ak[:, c], ls, color="tab:orange", lw=0.5, alpha=0.5)
    ax2.plot(lags, k[c, :], "-", color="tab:blue", lw=1.8, label="detector, along a row")
    ax2.plot(lags, k[:, c], "-", color="tab:orange", lw=1.8, label="detector, along a column")
    ax2.set_xlabel("lag (pixels)", fontsize=7)
    ax2.set_ylabel("kernel", fontsize=7)
    ax2.tick_params(labelsize=6)
    ax2.legend(fontsize=6)
    ax2.grid(alpha=0.3)
    n_valid = sum(bool(v) for v in cal.valid.values())
    fig.suptitle(f"{title} ({n_valid}/{len(cal.valid)} amps valid)", fontsize=9)
    return _save(fig, path)


def render_electrostatic_png(path_in: str, path: str | os.PathLike, title: str) -> Path:
    """|a| (1/e-) of the measured mean a matrix and of the fitted model against the lag distance, and the
    residual (measured − model) / σ per lag (row lag up, column lag right)."""
    from cpframe.science.electrostatic import read_electrostatic

    sol = read_electrostatic(path_in)
    r = sol.fit_range
    a = np.asarray(sol.a_matrix, float)[:r, :r]
    sig = np.asarray(sol.a_matrix_sigma, float)[:r, :r]
    m = np.asarray(sol.a_matrix_model, float)[:r, :r]
    i, j = np.meshgrid(np.arange(r), np.arange(r), indexing="ij")
    dist = np.hypot(i, j)
    fig = _figure(7.5, 3.6)
    ax = fig.add_axes((0.08, 0.13, 0.4, 0.7))
    for sel, label, col in ((j == 0, "along a column (row lag)", "tab:orange"),
                            (i == 0, "along a row (column lag)", "tab:blue"),
                            ((i > 0) & (j > 0), "off the axes", "0.4")):
        ok = sel & np.isfinite(a)
        ax.errorbar(dist[ok], np.abs(a[ok]), yerr=sig[ok], fmt="o", ms=3, color=col, lw=0.6,
                    label=f"measured, {label}")
        ax.plot(dist[sel], np.abs(m[sel]), "x", ms=5, color=col)
    ax.plot([], [], "x", color="k", label="electrostatic model")
    ax.set_yscale("log")
    ax.set_xlabel("lag distance (pixels)", fontsize=7)
    ax.set_ylabel("|a| (1/e-; a00 < 0)", fontsize=7)
    ax.tick_params(labelsize=6)
    ax.legend(fontsize=5.5)
    ax.grid(alpha=0.3)
    ax2 = fig.add_axes((0.58, 0.13, 0.34, 0.7))
    with np.errstate(invalid="ignore", divide="ignore"):
        pull = (a - m) / sig
    lim = max(float(np.nanmax(np.abs(pull))) if np.isfinite(pull).any() else 1.0, 1.0)
    im = ax2.imshow(pull, origin="lower", cmap="coolwarm", vmin=-lim, vmax=lim)
    cb = fig.colorbar(im, ax=ax2, fraction=0.046, pad=0.02)
    cb.set_label("(measured - model) / σ", fontsize=6)
    cb.ax.tick_params(labelsize=6)
    ax2.set_xlabel("column lag", fontsize=7)
    ax2.set_ylabel("row lag", fontsize=7)
    ax2.tick_params(labelsize=6)
    p = sol.fit_params
    geo = ", ".join(f"{k}={p[k]:.2f}" for k in ("zq", "zsh", "zsv", "a", "b") if k in p)
    fig.suptitle(f"{title}: a00 model {m[0, 0]:.3g} /e-, measured {a[0, 0]:.3g} /e- (fit range {r})\n"
                 f"{geo} µm; reduced χ² {sol.fit_reduced_chi2:.2f}", fontsize=7)
    return _save(fig, path)


def render_gain_correction_png(path_in: str, path: str | os.PathLike, title: str) -> Path:
    """Amp map of the adjustment (%) and the per-amp flat ratio before / after the correction."""
    from cpframe.camera.models import load_camera
    from cpframe.science.gain_correction import read_gain_correction

    cal = read_gain_correction(path_in)
    names = list(cal.adjustments)
    adj = np.array([cal.adjustments[a] for a in names])
    ratio = cal.meta.get("flat_ratio_per_amp") or {}
    r = np.array([float(ratio[a]) if ratio.get(a) is not None else np.nan for a in names])
    fig = _figure(7.5, 3.4)
    ax = fig.add_axes((0.05, 0.14, 0.36, 0.72))
    grid = None
    try:
        m = cal.meta
        det = load_camera(str(m["INSTRUME"]), str(m.get("CAMSCALE", "full")).lower()).detector(int(m["DETECTOR"]))
        rows, cols = max(a.row for a in det.amps) + 1, max(a.col for a in det.amps) + 1
        grid = np.full((rows, cols), np.nan)
        for a in det.amps:
            grid[a.row, a.col] = 100.0 * (cal.adjustments.get(a.name, np.nan) - 1.0)
            ax.text(a.col, a.row, a.name, ha="center", va="center", fontsize=5)
    except Exception:  # a file without camera metadata: one row in file order
        grid = 100.0 * (adj[None, :] - 1.0)
    lim = max(float(np.nanmax(np.abs(grid))) if np.isfinite(grid).any() else 0.0, 0.05)
    im = ax.imshow(grid, origin="lower", cmap="coolwarm", vmin=-lim, vmax=lim, aspect="auto")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02).ax.tick_params(labelsize=6)
    ax.set_title("adjustment - 1 (%), amps on the detector", fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])
    ax2 = fig.add_axes((0.53, 0.2, 0.45, 0.66))
    x = np.arange(len(names))
    if np.isfinite(r).any():
        scale = np.nanmedian(r)
        ax2.plot(x, 100.0 * (r / scale - 1.0), "o", ms=3, label="flat ratio, uncorrected")
        ax2.plot(x, 100.0 * (r * adj / np.nanmedian(r * adj) - 1.0), "s", ms=3, label="corrected (x adjustment)")
    ax2.axhline(0.0, color="0.5", lw=0.6)
    ax2.set_xticks(x)
    ax2.set_xticklabels(names, rotation=90, fontsize=5)
    ax2.set_ylabel("new / reference flat - 1 (%)", fontsize=7)
    ax2.tick_params(labelsize=6)
    ax2.legend(fontsize=6)
    ax2.grid(alpha=0.3)
    excluded = cal.meta.get("excluded_amps") or []
    fig.suptitle(f"{title}" + (f" (excluded: {', '.join(excluded)})" if excluded else ""), fontsize=9)
    return _save(fig, path)


def render_flat_gradient_png(path_in: str, path: str | os.PathLike, title: str) -> Path:
    """The fitted model over the focal plane (mm) and the radial spline with its nodes."""
    from cpframe.science.flat_gradient import read_flat_gradient

    g = read_flat_gradient(path_in)
    rmax = float(g.meta.get("data_radius_mm") or g.radial_spline_nodes[-1])
    fig = _figure(7.5, 3.4)
    ax = fig.add_axes((0.06, 0.14, 0.36, 0.72))
    xs = np.linspace(-rmax, rmax, 121)
    xx, yy = np.meshgrid(xs, xs)
    model = g.full_model(xx, yy)
    model[np.hypot(xx, yy) > rmax] = np.nan
    im = ax.imshow(model, origin="lower", extent=(-rmax, rmax, -rmax, rmax), cmap="viridis")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02).ax.tick_params(labelsize=6)
    ax.set_title("model S(r) / plane", fontsize=8)
    ax.set_xlabel("focal plane x (mm)", fontsize=7)
    ax.set_ylabel("focal plane y (mm)", fontsize=7)
    ax.tick_params(labelsize=6)
    ax2 = fig.add_axes((0.56, 0.14, 0.42, 0.72))
    r = np.linspace(0.0, rmax, 200)
    ax2.plot(r, g.radial_model(r + g.centroid_x + g.centroid_delta_x, np.full_like(r, g.centroid_y + g.centroid_delta_y)),
             "-", lw=1.2, label="radial spline")
    ax2.plot(g.radial_spline_nodes, g.radial_spline_values, "o", ms=3, label="nodes")
    ax2.set_xlabel("radius (mm)", fontsize=7)
    ax2.set_ylabel("relative to the centre", fontsize=7)
    ax2.tick_params(labelsize=6)
    ax2.legend(fontsize=6)
    ax2.grid(alpha=0.3)
    fig.suptitle(f"{title}: gradient ({g.gradient_x:.2e}, {g.gradient_y:.2e}) /mm, residual rms "
                 f"{100 * float(g.meta.get('residual_rms', float('nan'))):.2f} %", fontsize=8)
    return _save(fig, path)


CALTYPE_PRODUCTS.update({
    "linearizer": (render_linearity_png, "Linearizer {det}: residual non-linearity of every amp's ramp before and "
                                         "after the correction; dashed: the ±0.1 % target."),
    "crosstalk": (render_crosstalk_png, "Crosstalk {det}: coefficient matrix, log10 |C[target, source]|; blank = "
                                        "not significant (set to 0)."),
    "cti": (render_cti_png, "CTI {det}: first serial-overscan column (EPER) against the last data column, per amp, "
                            "with the fitted n ε S + trap model."),
    "bfk": (render_bfk_png, "Brighter-fatter kernel {det}: the detector kernel (average of the valid amps' kernels) "
                            "and cuts through the centre; thin lines: each amp (dashed: failed cp_pipe's validity "
                            "checks)."),
    "electroBfDistortionMatrix": (render_electrostatic_png, "Electrostatic brighter-fatter {det}: |a| of the PTC's "
                                                            "mean a matrix (points, error of the mean over amps) and "
                                                            "of the fitted model (crosses) against the lag distance; "
                                                            "right: (measured - model) / σ per lag."),
    "gain_correction": (render_gain_correction_png, "Gain correction {det}: the factor on each amp's PTC gain "
                                                    "(% from 1) where the amp sits, and the new / reference flat "
                                                    "ratio per amp before and after it (the steps it removes)."),
    "flat_gradient_reference": (render_flat_gradient_png, "Flat gradient reference {det}: the fitted large-scale "
                                                          "model over the focal plane and its radial spline."),
})


def caltype_figures(writer: Any, st: Any, products: Sequence[Any]) -> list[str]:
    """Figures (HTML) of a linearizer / crosstalk / CTI stage: one PNG per detector product.

    ``writer`` is the report writer (``png(rel, render)``, ``figure(rel, caption)``,
    ``_camera_from_meta``); ``products`` its items of the stage's product type.
    """
    render, caption = CALTYPE_PRODUCTS[st.product]
    out = []
    for it in products:
        did = it.ref.data_id
        try:
            det = writer._camera_from_meta(did["instrument"]).detector(did["detector"]).name
        except Exception:  # a focal-plane product (per filter), or a detector the camera model does not know
            det = str(did.get("detector", did.get("physical_filter")))
        rel = writer.png(f"src/{st.key}/{st.product}_{det}_{it.ref.id[:8]}.png",
                         lambda p, src=str(it.path), t=f"{st.product} {det}": render(src, p, t))
        it.link = rel
        out.append(writer.figure(rel, caption.format(det=det)))
    return out
