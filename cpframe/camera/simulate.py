"""Camera simulator: raw files with every effect calibration removes, plus the truth injected.

The simulator writes one ``fits-raw`` file per exposure x detector (docs/architecture.md)
and saves, beside the data, the truth it used (``truth/truth.json`` +
``truth/truth_arrays.npz``) so that tests can compare calibrations with it.

Model of one exposure x detector (units in brackets)
----------------------------------------------------
On the assembled detector image, in electrons::

    lam   = (flux + stars) * exposure_time * response(band)      # response = flat * norm
          + dark_rate * dark_time                                 # per-amp dark + hot pixels
    e     = Poisson(lam) + cosmic rays, clipped at the amp's full well

Per amplifier, in the read-out frame (``cpframe/camera/models.py``), in adu::

    (with the brighter_fatter effect, Poisson(lam) is collected in steps whose pixel areas
    follow the charge already collected: cpframe/camera/bf.py)
    s     = e / gain;  s *= 1 + k2 * s + k3 * s²  (per amp);  s += crosstalk @ s(other amps)
    raw   = s (data region only) + bias_level + jitter + drift(row) + bias_pattern (data only)
          + Normal(0, read_noise / gain)       (everywhere: prescan, data, both overscans)
    raw   = clip(rint(raw), 0, 2**adc_bits - 1) as int32

``Truth.flat(detector, band)`` is ``response / mean over the focal plane`` (so it averages
to ~1 over all detectors of the camera); ``Truth.amp(d, a).saturation`` is the raw level
(adu, bias included) where the full well (or the ADC) clips.

Every random draw comes from ``numpy.random.SeedSequence`` streams: truth from
``(seed, TRUTH, detector)``, each exposure x detector from ``(seed, exposure_id,
detector)``, split into independent children (signal, cosmic rays, bias, noise) so that
switching one effect off leaves the other draws unchanged.  Same seed -> same bytes.
"""

from __future__ import annotations

import functools
import math
import os
import threading
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from cpframe.camera.bf import apply_brighter_fatter
from cpframe.camera.cti import apply_deferred_charge
from cpframe.camera.gain_drift import exposure_gain
from cpframe.camera import fringe as _fringe
from cpframe.camera import illumination as _illum
from cpframe.camera import led_flats as _led
from cpframe.camera import sky as _sky
from cpframe.camera.models import Camera, Detector, load_camera
from cpframe.camera.nonlinearity import apply_nonlinearity
from cpframe.camera.spots import spot_field
from cpframe.camera.plan import (  # noqa: F401
    OBSERVATION_TYPES,
    ExposureSpec,
    Plan,
    fast_tai_ns,
    list_plans,
    load_plan,
    read_plan,
)
from cpframe.camera.truth import (  # noqa: F401
    _BUMP_ROWS_USED,
    EFFECTS,
    AmpTruth,
    DetectorTruth,
    Truth,
    _sim_facts,
    _to_readout,
    make_truth,
)
from cpframe.core.errors import UserInputError

__all__ = [
    "ExposureSpec",
    "Plan",
    "AmpTruth",
    "DetectorTruth",
    "Truth",
    "EFFECTS",
    "OBSERVATION_TYPES",
    "list_plans",
    "read_plan",
    "load_plan",
    "make_truth",
    "simulate_detector",
    "write_raw",
    "raw_path",
    "simulate",
    "fast_tai_ns",
    "process_context",
    "raw_header_cards",
]


# =========================================================================================
# One exposure x detector
# =========================================================================================




def _poisson(rng: np.random.Generator, lam: np.ndarray) -> np.ndarray:
    """Poisson draw of float32 ``lam`` (overwritten); Gaussian approximation above 100 e-.

    The approximation keeps the mean and the variance (what ISR, PTC and verification use).
    """
    small = np.flatnonzero(lam <= 100.0)
    if small.size == lam.size:
        return rng.poisson(lam).astype(np.float32)
    exact = rng.poisson(lam.flat[small]) if small.size else None
    noise = rng.standard_normal(lam.shape, dtype=np.float32)
    noise *= np.sqrt(lam)
    lam += noise
    if exact is not None:
        lam.flat[small] = exact
    return lam


def _cosmic_rays(
    rng: np.random.Generator, shape: tuple[int, int], rate_per_cm2_s: float, dark_time: float, pixel_um: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Pixels (y, x) and charges (e-) of cosmic-ray tracks and worms."""
    area_cm2 = shape[0] * shape[1] * (pixel_um * 1e-4) ** 2
    n = int(rng.poisson(rate_per_cm2_s * area_cm2 * dark_time))
    if n == 0:
        return None
    ys, xs, qs = [], [], []
    for _ in range(n):
        y0, x0 = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
        if rng.random() < 0.7:  # muon track through 100 um of silicon
            cos_t = math.sqrt(rng.uniform(0.05, 1.0))
            length = min(100.0, 10.0 * math.sqrt(1 - cos_t**2) / cos_t)
            phi = rng.uniform(0, 2 * math.pi)
            nstep = max(1, int(2 * length) + 1)
            t = np.linspace(0.0, length, nstep)
            y = y0 + t * math.sin(phi) + rng.normal(0, 0.35, nstep)
            x = x0 + t * math.cos(phi) + rng.normal(0, 0.35, nstep)
            q = np.full(nstep, 8000.0 / cos_t / nstep)
        else:  # low-energy electron: a short random walk ("worm")
            nstep = int(rng.integers(4, 20))
            y = y0 + np.cumsum(rng.normal(0, 0.7, nstep))
            x = x0 + np.cumsum(rng.normal(0, 0.7, nstep))
            q = np.full(nstep, rng.uniform(3000, 20000) / nstep)
        ys.append(y)
        xs.append(x)
        qs.append(q)
    y = np.floor(np.concatenate(ys)).astype(int)
    x = np.floor(np.concatenate(xs)).astype(int)
    q = np.concatenate(qs)
    ok = (y >= 0) & (y < shape[0]) & (x >= 0) & (x < shape[1])
    return y[ok], x[ok], q[ok]


def _star_field(rng: np.random.Generator, shape: tuple[int, int], density: float) -> np.ndarray | None:
    """Stars (e-/s per pixel) with a Gaussian PSF, sigma 1.7 px."""
    n = int(rng.poisson(density * shape[0] * shape[1]))
    if n == 0:
        return None
    img = np.zeros(shape, dtype=np.float32)
    half = 8
    sig = 1.7
    for _ in range(n):
        yc, xc = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
        rate = 10 ** rng.uniform(2.0, 5.0)
        y0, x0 = max(0, int(yc) - half), max(0, int(xc) - half)
        y1, x1 = min(shape[0], int(yc) + half + 1), min(shape[1], int(xc) + half + 1)
        gy = np.exp(-0.5 * ((np.arange(y0, y1) + 0.5 - yc) / sig) ** 2)
        gx = np.exp(-0.5 * ((np.arange(x0, x1) + 0.5 - xc) / sig) ** 2)
        img[y0:y1, x0:x1] += (rate / (2 * math.pi * sig * sig)) * np.outer(gy, gx)
    return img


def _exposure_rngs(seed: int, exposure_id: int, detector_id: int) -> list[np.random.Generator]:
    ss = np.random.SeedSequence([int(seed), int(exposure_id), int(detector_id)])
    return [np.random.default_rng(s) for s in ss.spawn(4)]


def simulate_detector(
    camera: Camera, detector_id: int, spec: ExposureSpec, truth: Truth, seed: int
) -> list[np.ndarray]:
    """Simulate the raw amplifier segments of one detector for one exposure.

    Returns
    -------
    list of numpy.ndarray
        One ``int32`` array per amp, in the camera file's amp order, shape ``amp.raw_shape``,
        in read-out order.  Deterministic for (seed, exposure id, detector).

    Raises
    ------
    UserInputError
        Truth made for another instrument or scale.
    CameraError
        Unknown detector or filter.
    """
    if truth.instrument != camera.name or truth.scale != camera.scale:
        raise UserInputError(
            f"truth is for {truth.instrument} at scale {truth.scale!r} but the camera is {camera.name} at "
            f"scale {camera.scale!r}; make the truth with make_truth(camera, seed)."
        )
    det = camera.detector(detector_id)
    dt = truth.detectors[det.id]
    facts = _sim_facts(camera, det)
    adc_max = 2 ** int(facts.get("adc_bits", 18)) - 1
    eff = truth.effects
    r_signal, r_cosmic, r_bias, r_noise = _exposure_rngs(seed, spec.exposure_id, det.id)
    band = camera.band_of(spec.physical_filter)

    # -- electrons, amp by amp (blocks of ~1 M pixels stay in cache) ---------------------------
    # Poisson sums split: the uniform dark of an amp joins its light (one draw) or, with no
    # light, is drawn as N ~ Poisson(rate * t * npix) events at uniform positions (exact, and
    # far cheaper than a Poisson draw per pixel); hot pixels are drawn on their own.
    light = spec.flux > 0 and spec.exposure_time > 0
    stars = None
    sky = spec.flux
    illum = eff.get("illumination_correction", 0.0)
    if light and spec.observation_type == "science" and illum:  # fixed field, dithered (camera/illumination.py)
        stars = _illum.dithered_star_field(truth.seed, det.id, spec.day_obs, spec.seq_num, det.shape)
    elif light and spec.observation_type == "science" and eff.get("stars", 0) > 0:
        stars = _star_field(r_signal, det.shape, eff["stars"])
    elif light and spec.observation_type == "spot":  # one amp lit past full well (crosstalk)
        stars, sky = spot_field(det, spec.seq_num, spec.flux), 0.0
    resp = truth.response(det.id, band) if light else None
    if light and illum:  # the dome flat's own pattern (camera/illumination.py)
        resp = _illum.dome_response(resp, truth.seed, det.id, spec.observation_type, illum)
    if light and eff.get("led_flats") and _led.led_name(spec.observation_reason):  # camera/led_flats.py
        resp = resp * _led.response_factor(truth, det, spec.observation_reason).astype(np.float32)
    sky_extra = _sky.extra_sky(camera, det, spec, truth.seed, eff.get("sky_frame", 0.0)) if light else None
    sky_extra = _fringe.add_fringes(sky_extra, det, spec, band, truth.seed, eff.get("fringe", 0.0)) if light else None
    dark_t = spec.dark_time if eff["dark_current"] or eff["defects"] or eff["manual_defects"] else 0.0
    extra = []  # sparse charges (y, x, e-): hot pixels, cosmic rays
    hot_y, hot_x, hot_rate = truth.hot_pixels(det.id)
    if dark_t > 0 and hot_rate.size:
        q = hot_rate * dark_t
        extra.append((hot_y, hot_x, r_signal.poisson(q) if eff["poisson"] else q))
    if eff["cosmics"] > 0 and spec.dark_time > 0:
        cr = _cosmic_rays(
            r_cosmic, det.shape, eff["cosmics"], spec.dark_time, float(facts.get("pixel_size_um", 10.0))
        )
        if cr is not None:
            extra.append(cr)
    dead = [(x0, y0, w, h) for x0, y0, w, h, kind in dt.defects if kind == "dead"]
    has_dark = dark_t > 0 and any(dt.amps[a.name].dark_current > 0 for a in det.amps)
    signal = None
    trails: dict[int, np.ndarray] = {}
    if light or has_dark or extra:
        signal = np.zeros((len(det.amps), det.amps[0].data_rows, det.amps[0].data_cols), dtype=np.float32)
    for a in det.amps if signal is not None else ():
        at = dt.amps[a.name]
        ys, xs = a.bbox
        dark_e = np.float32(at.dark_current * dark_t)
        if light:
            lam = resp[ys, xs] * np.float32(sky * spec.exposure_time)
            if sky_extra is not None:  # sky structure and fringes (camera/sky.py, camera/fringe.py)
                lam += sky_extra[ys, xs] * resp[ys, xs] * np.float32(spec.exposure_time)
            if stars is not None:
                lam += stars[ys, xs] * resp[ys, xs] * np.float32(spec.exposure_time)
            lam += dark_e
            if at.bf_a00 and eff["poisson"]:  # pixel areas follow the charge (camera/bf.py)
                e = apply_brighter_fatter(r_signal, lam, at.bf_a00)
            else:
                e = _poisson(r_signal, lam) if eff["poisson"] else lam
        elif has_dark and eff["poisson"]:
            npix = a.data_rows * a.data_cols
            n = int(r_signal.poisson(float(dark_e) * npix))
            e = (
                np.bincount(r_signal.integers(0, npix, n), minlength=npix)
                .astype(np.float32)
                .reshape(a.data_rows, -1)
            )
        else:
            e = np.full((a.data_rows, a.data_cols), dark_e, dtype=np.float32)
        for yy, xx, qq in extra:
            inside = (yy >= ys.start) & (yy < ys.stop) & (xx >= xs.start) & (xx < xs.stop)
            if inside.any():
                np.add.at(
                    e, (yy[inside] - ys.start, xx[inside] - xs.start), np.asarray(qq, np.float32)[inside]
                )
        for x0, y0, w, h in dead:  # collects nothing: no light, no dark current, no cosmic-ray charge
            e[
                max(y0 - ys.start, 0) : max(y0 + h - ys.start, 0),
                max(x0 - xs.start, 0) : max(x0 + w - xs.start, 0),
            ] = 0.0
        if math.isfinite(at.full_well):
            np.minimum(e, np.float32(at.full_well), out=e)
        gain = exposure_gain(at.gain, at.gain_drift, spec.day_obs, eff.get("gain_drift_day_obs", 0))  # restarts
        if at.cti or at.trap_size:  # serial deferred charge, in e-; the trail goes to the overscan
            e, trail = apply_deferred_charge(e, a, at.cti, at.trap_size, at.trap_emission_time, at.trap_scaling)
            trails[a.index] = trail / gain
        e *= np.float32(1.0 / gain)
        apply_nonlinearity(e, at.nonlinearity, at.nonlinearity_cubic)
        signal[a.index] = _to_readout(e, a)
    if signal is not None and dt.crosstalk.any():
        signal = signal + np.tensordot(dt.crosstalk.astype(np.float32), signal, axes=(1, 0))

    # -- bias, drift, pattern, read noise; digitise --------------------------------------------
    segments = []
    for a in det.amps:
        at = dt.amps[a.name]
        nrow, ncol = a.raw_shape
        level = at.bias_level + (
            eff["bias_jitter"] * float(r_bias.standard_normal()) if eff["bias_jitter"] else 0.0
        )
        cycles = r_bias.uniform(0.5, 3.0)
        phase = r_bias.uniform(0, 2 * math.pi)
        drift = at.bias_drift * np.sin(2 * math.pi * cycles * np.arange(nrow) / nrow + phase)
        raw = r_noise.standard_normal((nrow, ncol), dtype=np.float32)
        raw *= np.float32(at.read_noise / at.gain)
        raw += (level + drift + 0.5).astype(np.float32)[:, None]  # + 0.5: truncation below rounds
        data = raw[a.data_slice]
        if at.bias_bump:  # the bump is below 1e-4 adu after _BUMP_ROWS_USED rows
            bump = truth.bias_pattern_raw(det.id, a.name)[:_BUMP_ROWS_USED]
            data[: len(bump)] += bump
        if signal is not None:
            data += signal[a.index]
        if a.index in trails:
            raw[: a.data_rows, a.serial_overscan_slice[1]] += trails[a.index].astype(np.float32)
        np.clip(raw, 0, adc_max, out=raw)
        segments.append(raw.astype(np.int32))  # values >= 0: truncation = floor
    return segments


# =========================================================================================
# Files
# =========================================================================================


def raw_path(outdir: str | os.PathLike, instrument: str, spec: ExposureSpec, detector: Detector) -> Path:
    """``outdir/<day_obs>/<exposure_id>/<instrument>_<exposure_id>_<detname>.fits``."""
    return (
        Path(outdir)
        / str(spec.day_obs)
        / str(spec.exposure_id)
        / (f"{instrument}_{spec.exposure_id}_{detector.name}.fits")
    )


def _mjd(ns: int) -> float:
    return 40587.0 + ns / 86400e9


def _primary_bytes(cards) -> bytes:
    from astropy.io import fits

    hdr = fits.Header(
        [
            ("SIMPLE", True, "conforms to FITS standard"),
            ("BITPIX", 8, "array data type"),
            ("NAXIS", 0, "number of array dimensions"),
            ("EXTEND", True),
        ]
    )
    hdr.extend(cards)
    return hdr.tostring().encode("ascii")


@functools.lru_cache(maxsize=4096)
def _amp_header_bytes(instrument: str, scale: str, detector_id: int, amp_name: str) -> bytes:
    from astropy.io import fits

    a = load_camera(instrument, scale).detector(detector_id).amp(amp_name)
    nrow, ncol = a.raw_shape
    h = fits.Header(
        [
            ("XTENSION", "IMAGE", "Image extension"),
            ("BITPIX", 32, "array data type"),
            ("NAXIS", 2, "number of array dimensions"),
            ("NAXIS1", ncol),
            ("NAXIS2", nrow),
            ("PCOUNT", 0, "number of parameters"),
            ("GCOUNT", 1, "number of groups"),
            ("EXTNAME", f"SEGMENT{a.name[1:]}", "extension name"),
            ("AMPNAME", a.name, "amplifier"),
            ("DATASEC", a.datasec, "data region, raw (read-out) frame"),
            ("BIASSEC", a.biassec, "serial overscan, raw frame"),
            ("DETSEC", a.detsec, "data region in the assembled detector"),
            ("BUNIT", "adu", "raw counts"),
        ]
    )
    return h.tostring().encode("ascii")


def write_raw(
    path: str | os.PathLike,
    camera: Camera,
    detector_id: int,
    spec: ExposureSpec,
    segments: Sequence[np.ndarray] | None,
    seed: int,
) -> Path:
    """Write one ``fits-raw`` file (docs/architecture.md), atomically (temporary name + rename).

    ``segments=None`` writes the headers only and leaves every pixel 0 as a hole of a sparse
    file (for tests and benchmarks of header handling: no disk space, no write time).

    Returns the path written.
    """
    det = camera.detector(detector_id)
    if segments is not None and len(segments) != len(det.amps):
        raise UserInputError(
            f"{det.name}: {len(segments)} segments given, the detector has {len(det.amps)} amps."
        )
    cards = raw_header_cards(camera, det.id, spec, seed)
    for a, seg in zip(det.amps, segments or []):
        if seg.shape != a.raw_shape:
            raise UserInputError(f"{det.name} {a.name}: segment shape {seg.shape}, expected {a.raw_shape}.")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    # Headers are formatted by astropy; the HDUs are laid out directly (header blocks, big-endian
    # data padded to 2880 bytes), which is ~10x faster than building HDU objects for 16 small
    # segments.  tests/test_simulate.py checks the files with astropy's verify().
    try:
        with open(tmp, "wb") as f:
            f.write(_primary_bytes(cards))
            for i, a in enumerate(det.amps):
                f.write(_amp_header_bytes(camera.name, camera.scale, det.id, a.name))
                nbytes = a.raw_shape[0] * a.raw_shape[1] * 4
                if segments is None:
                    f.seek(nbytes + (-nbytes % 2880), os.SEEK_CUR)
                    continue
                data = np.ascontiguousarray(segments[i], dtype=">i4")
                f.write(data.data)
                if -nbytes % 2880:
                    f.write(b"\0" * (-nbytes % 2880))
            f.truncate()
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out


def raw_header_cards(camera: Camera, detector_id: int, spec: ExposureSpec, seed: int) -> list[tuple]:
    """Primary-header cards of a raw file, in the real cameras' format (``cpframe.camera.raw_headers``)."""
    from cpframe.camera.raw_headers import raw_header_cards as cards

    return cards(camera, detector_id, spec, seed)


# =========================================================================================
# Whole campaigns, in parallel
# =========================================================================================

_WORKER: dict[str, Any] = {}


def process_context(preload: Sequence[str]):
    """Multiprocessing context for worker pools: ``fork`` when this process runs a single
    thread (cheap: nothing to import again), else ``forkserver`` (forking a process that runs
    threads, e.g. a Dask client, can deadlock), whose server imports ``preload`` once."""
    import multiprocessing as mp

    if threading.active_count() == 1:
        return mp.get_context("fork")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(list(preload))
    return ctx


def _init_worker(truth: Truth, outdir: str, seed: int) -> None:
    """Process-pool initializer: the job's context, sent once per worker process."""
    _WORKER.update(truth=truth, outdir=outdir, seed=seed, camera=truth.camera)


def _one(task: tuple[ExposureSpec, int], ctx: Mapping[str, Any] | None = None) -> tuple[str, int]:
    """Simulate and write one (exposure, detector); ``ctx`` for threads, the process global otherwise."""
    ctx = ctx if ctx is not None else _WORKER
    spec, det_id = task
    cam, truth, seed = ctx["camera"], ctx["truth"], ctx["seed"]
    segs = simulate_detector(cam, det_id, spec, truth, seed)
    path = write_raw(
        raw_path(ctx["outdir"], cam.name, spec, cam.detector(det_id)), cam, det_id, spec, segs, seed
    )
    return str(path), path.stat().st_size


def simulate(
    specs: Iterable[ExposureSpec],
    outdir: str | os.PathLike,
    instrument: str,
    scale: str = "mini",
    seed: int = 1,
    detectors: Iterable[int | str] | None = None,
    workers: int | None = None,
    truth: Truth | None = None,
    executor: str = "thread",
    progress: Callable[[int, int], None] | None = None,
) -> list[Path]:
    """Simulate raw files for every (exposure, detector) and save the truth.

    Writes ``outdir/<day_obs>/<exposure_id>/<instrument>_<exposure_id>_<detname>.fits`` and
    ``outdir/truth/`` (see :meth:`Truth.save`).  Existing files are rewritten (identically,
    for the same seed).

    Parameters
    ----------
    specs
        Exposures (e.g. from :func:`load_plan`).
    outdir
        Output directory (created).
    instrument, scale
        Camera model and scale (``mini`` or ``full``).
    seed
        Master seed.
    detectors
        Detector ids or names; default all.
    workers
        Parallel workers; default ``min(cpu count, number of files)``; 1 = in this process.
    truth
        Use this truth instead of ``make_truth(camera, seed)``.
    executor
        ``thread`` (default: numpy and file writes release the GIL; no start-up cost) or
        ``process`` pool (see :func:`process_context`).
    progress
        Called as ``progress(done, total)`` after each file.

    Returns
    -------
    list of pathlib.Path
        Files written, sorted.

    Raises
    ------
    UserInputError, CameraError
        Duplicate exposure ids, unknown detectors/filters, truth for another camera.
    """
    camera = load_camera(instrument, scale)
    if executor not in ("thread", "process"):
        raise UserInputError(f"executor {executor!r}: use 'process' or 'thread'.")
    specs = list(specs)
    if not specs:
        raise UserInputError("no exposures to simulate; check the plan.")
    seen: dict[int, ExposureSpec] = {}
    for s in specs:
        camera.band_of(s.physical_filter)
        if s.observation_type not in OBSERVATION_TYPES:
            raise UserInputError(
                f"exposure {s.exposure_id}: observation_type {s.observation_type!r}; use one of "
                f"{', '.join(OBSERVATION_TYPES)}."
            )
        if s.exposure_id in seen:
            raise UserInputError(
                f"exposure {s.exposure_id} (day_obs {s.day_obs}, seq_num {s.seq_num}) is planned twice."
            )
        seen[s.exposure_id] = s
    dets = [camera.detector(d) for d in (detectors if detectors is not None else camera.science_detector_ids)]
    corner = [d.name for d in dets if d.purpose != "SCIENCE"]
    if corner:
        raise UserInputError(f"{camera.name} detector(s) {', '.join(corner)} are wavefront/guider sensors; "
                             "the simulator makes science detectors only.")
    det_ids = sorted({d.id for d in dets})
    if truth is None:
        first = min(specs, key=lambda s: s.begin_ns).begin
        truth = make_truth(camera, seed, date=first)
    elif truth.instrument != camera.name or truth.scale != camera.scale:
        raise UserInputError(
            f"truth is for {truth.instrument} at scale {truth.scale!r}, not {camera.name} at {scale!r}."
        )
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    truth.save(out / "truth", det_ids)
    # detector-major order keeps each worker's per-detector caches (flat, dark) warm
    tasks = [(s, d) for d in det_ids for s in sorted(specs, key=lambda s: s.exposure_id)]
    n = len(tasks)
    workers = max(1, min(workers or os.cpu_count() or 1, n))
    paths: list[Path] = []
    job = {"truth": truth, "outdir": str(out), "seed": seed, "camera": camera}
    if workers == 1:
        for i, t in enumerate(tasks):
            paths.append(Path(_one(t, job)[0]))
            if progress:
                progress(i + 1, n)
        return sorted(paths)
    if executor == "thread":
        pool, fn, chunk = ThreadPoolExecutor(workers), functools.partial(_one, ctx=job), 1
    else:
        pool = ProcessPoolExecutor(
            workers,
            mp_context=process_context(["cpframe.camera.simulate"]),
            initializer=_init_worker,
            initargs=(truth, str(out), seed),
        )
        fn, chunk = _one, max(1, n // (workers * 4))
    with pool:
        for i, (p, _size) in enumerate(pool.map(fn, tasks, chunksize=chunk)):
            paths.append(Path(p))
            if progress:
                progress(i + 1, n)
    return sorted(paths)


def plan_summary(specs: Iterable[ExposureSpec]) -> dict[int, dict[str, int]]:
    """Counts of exposures by day_obs and observation type."""
    out: dict[int, dict[str, int]] = {}
    for s in specs:
        d = out.setdefault(s.day_obs, {})
        d[s.observation_type] = d.get(s.observation_type, 0) + 1
    return dict(sorted(out.items()))
