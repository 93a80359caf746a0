"""Flat gradient reference: the focal-plane radial function and planar gradient fitted to simulated flats, checked
against the injected truth (``flat_gradient`` effect, cpframe/camera/fp_gradient.py).

Tolerance (issue 13, docs/algorithms.md "Flat gradient"): planar gradient (a, b) within 2 % of the truth (of the
gradient's size), the fitted model S(r)/(1 + a x + b y) within 0.5 % of the injected illumination everywhere
inside the fitted radius.
"""

from __future__ import annotations

import numpy as np
import pytest

from cpframe.camera.focal_plane import pixel_to_focal_plane
from cpframe.camera.fp_gradient import draw_band_gradient, gradient_factor
from cpframe.camera.models import load_camera
from cpframe.core.errors import ConfigError, UserInputError
from cpframe.science.flat_gradient import (
    FlatGradientConfig,
    bin_focal_plane,
    fit_flat_gradient,
    read_flat_gradient,
    write_flat_gradient,
)
from cpframe.science.imageio import FileFormatError

CAM = load_camera("LSSTComCam", "mini")
SEED = 23
NODES = [0.0, 15.0, 30.0, 45.0, 60.0, 75.0, 90.0]
CFG = {"binFactor": 32, "radialSplineNodes": NODES, "doFitGradient": True, "normalizeCenterRadius": 10.0}
GRAD_TOL, MODEL_TOL = 0.02, 0.005


@pytest.fixture(scope="module")
def truth():
    from cpframe.camera.simulate import make_truth

    # vignetting off: its illumination is elliptical in mm on these 4072 x 4000 detectors (module docstring of
    # fp_gradient); qe off: a detector-to-detector QE scatter is not part of the focal-plane model
    return make_truth(CAM, SEED, qe=False, vignetting=False, flat_gradient=True)


def _check(grad, truth, band):
    p = truth.bands[band]
    size = np.hypot(p["fp_gradient_x"], p["fp_gradient_y"])
    assert size > 1e-4  # a gradient of 2 % across the field is injected
    assert abs(grad.gradient_x - p["fp_gradient_x"]) < GRAD_TOL * size, (grad.gradient_x, p["fp_gradient_x"])
    assert abs(grad.gradient_y - p["fp_gradient_y"]) < GRAD_TOL * size, (grad.gradient_y, p["fp_gradient_y"])
    worst = 0.0
    for d in CAM.science_detectors:
        yy, xx = np.mgrid[0:d.shape[0]:10, 0:d.shape[1]:10]
        xf, yf = pixel_to_focal_plane(CAM, d, xx, yy)
        inside = np.hypot(xf, yf) <= grad.meta["data_radius_mm"]
        m = grad.full_model(xf, yf)[inside]
        ill = truth.illumination(d.id, band)[yy, xx][inside]
        worst = max(worst, float(np.max(np.abs(m / ill - 1.0))))
    assert worst < MODEL_TOL, worst
    return worst


def test_fit_recovers_the_injected_gradient_from_truth_flats(truth):
    flats = {d.id: (truth.flat(d.id, "r"), None, CAM, d) for d in CAM.science_detectors}
    grad = fit_flat_gradient(bin_focal_plane(flats, FlatGradientConfig.from_dict(CFG)), CFG)
    _check(grad, truth, "r")
    assert grad.meta["nodes_dropped"] == [90.0] and grad.radial_spline_nodes[-1] == pytest.approx(
        grad.meta["data_radius_mm"])


def test_fit_on_simulated_raws_through_isr_and_combine(truth, tmp_path):
    """Flats simulated with photon noise, PRNU and defects, ISR'd (truth PTC gains) and combined per detector with
    one scale for the whole focal plane (so the detectors keep their relative levels, as the pipeline's
    focal-plane normalisation does), then fitted."""
    from cpframe.camera.simulate import ExposureSpec, simulate
    from cpframe.science.combine import combine_config_for
    from cpframe.science.flat_gradient import flat_gradient_task
    from cpframe.science.isr import isr_config_for
    from cpframe.science.tasks import _run_isr_all, combine_task
    from tests._run_helpers import write_truth_ptc

    specs = [ExposureSpec(20241110, i + 1, "flat", "r_03", 10.0, 10.3, f"2024-11-10T20:{i:02d}:00", "flat", "GRAD",
                          5000.0) for i in range(3)]
    ids = [d.id for d in CAM.science_detectors]
    paths = simulate(specs, tmp_path / "raw", CAM.name, "mini", seed=SEED, detectors=ids, workers=2, truth=truth)
    icfg = isr_config_for("flat", do_bias=False, do_dark=False)
    flats = []
    for d in ids:
        mine = [p for p in paths if p.name.endswith(f"_{CAM.detector(d).name}.fits")]
        ptc = write_truth_ptc(tmp_path / f"ptc{d}.fits", truth, d)
        exps = _run_isr_all(mine, tmp_path / f"isr{d}", icfg, {"ptc": str(ptc)}, 2, None)
        res = combine_task([e.path for e in exps], tmp_path / f"flat{d}.fits", combine_config_for("flat"),
                           scales=[1.0] * len(exps))
        flats.append(str(res.path))
    grad = flat_gradient_task(flats, tmp_path / "grad.json", {**CFG, "doReferenceGradient": True})
    _check(grad, truth, "r")
    back = read_flat_gradient(grad.path)
    assert back.radial_spline_values == grad.radial_spline_values and back.meta["OBSTYPE"] == "flat_gradient_reference"


def test_truth_model_and_draws():
    a = draw_band_gradient(1, "r", 0.02, 80.0)
    assert a == draw_band_gradient(1, "r", 0.02, 80.0) and a != draw_band_gradient(1, "g", 0.02, 80.0)
    assert np.hypot(a["fp_gradient_x"], a["fp_gradient_y"]) == pytest.approx(0.02 / 80.0)
    assert float(gradient_factor(a, 0.0, 0.0)) == 1.0
    # the factor is the fitted model's family: radial part over a plane
    x, y = 30.0, -20.0
    plane = 1 + a["fp_gradient_x"] * x + a["fp_gradient_y"] * y
    assert float(gradient_factor(a, x, y)) == pytest.approx((1 - 0.04 * (x * x + y * y) / 6400.0) / plane)


def test_config_files_and_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown flat-gradient option.*'binFactr'"):
        FlatGradientConfig.from_dict({"binFactr": 4})
    with pytest.raises(ConfigError, match="at least two increasing radii"):
        FlatGradientConfig.from_dict({"radialSplineNodes": [0.0, 50.0, 20.0]})
    FlatGradientConfig.from_dict({"fit_eps": 1e-8, "radial_spline_nodes_initial": [0.0, 1.0]})  # accepted, unused
    binned = {"xf": np.array([1.0, 2.0]), "yf": np.array([0.0, 0.0]), "value": np.array([np.nan, np.nan])}
    with pytest.raises(UserInputError, match="no usable binned flat value"):
        fit_flat_gradient(binned, CFG)
    binned = {"xf": np.linspace(0, 10, 30), "yf": np.zeros(30), "value": np.ones(30)}
    with pytest.raises(UserInputError, match="radial node.*inside the data radius"):
        fit_flat_gradient(binned, CFG)
    (tmp_path / "x.json").write_text('{"format": "cpframe-flat-gradient", "version": 1, "radial_spline_nodes": [0]}')
    with pytest.raises(FileFormatError, match="damaged"):
        read_flat_gradient(tmp_path / "x.json")
    flats = {4: (np.ones((20, 20)), None, CAM, CAM.detector(4))}
    with pytest.raises(UserInputError, match="no whole 32 x 32 bin"):
        bin_focal_plane(flats, FlatGradientConfig.from_dict(CFG))
    from cpframe.science.flat_gradient import FlatGradient

    g = FlatGradient([0.0, 1.0], [1.0, 0.9], gradient_x=1e-4)
    assert read_flat_gradient(write_flat_gradient(tmp_path / "g.json", g)).gradient_x == 1e-4


# ------------------------------------------------------------------------------------------
# the real cp_pipe template, unchanged, on a simulated repository (stack unset: cpframe's pipeline)
# ------------------------------------------------------------------------------------------
def test_real_flat_gradient_reference_template_runs_unchanged(tmp_path, truth, local_dask, monkeypatch):
    from pathlib import Path

    from cpframe.camera.simulate import ExposureSpec, simulate
    from cpframe.execution.submit import submit_template
    from cpframe.science.imageio import write_masked
    from tests._run_helpers import INSTRUMENT, RAW_RUN, TICKET, TRUTH_COLLECTION, make_repo, put_certified, \
        write_truth_defects, write_truth_ptc

    specs = [ExposureSpec(20241110, i + 1, "flat", "r_03", 10.0, 10.3, f"2024-11-10T20:{i:02d}:00", "flat", "GRAD",
                          5000.0) for i in range(3)]
    ids = [d.id for d in CAM.science_detectors]
    simulate(specs, tmp_path / "raw", CAM.name, "mini", seed=SEED, detectors=ids, workers=2, truth=truth)
    repo = make_repo(tmp_path / "repo", None, files=[tmp_path / "raw"])
    try:
        items = {"ptc": [], "bias": [], "dark": [], "defects": []}
        for d in ids:
            det = CAM.detector(d)
            did = {"instrument": INSTRUMENT, "detector": d}
            z, zm = np.zeros(det.shape, np.float32), np.zeros(det.shape, np.int32)
            head = {"INSTRUME": CAM.name, "DETECTOR": d, "CAMSCALE": "mini", "LSST ISR UNITS": "electron"}
            items["ptc"].append((write_truth_ptc(tmp_path / f"ptc{d}.fits", truth, d), did))
            items["defects"].append((write_truth_defects(tmp_path / f"defects{d}.ecsv", truth, d), did))  # masked out
            items["bias"].append((write_masked(tmp_path / f"bias{d}.fits", z, zm, z + 1.0, head), did))
            items["dark"].append((write_masked(tmp_path / f"dark{d}.fits", z, zm, z, head), did))
        for dt, its in items.items():
            put_certified(repo, dt, its, f"{TRUTH_COLLECTION}/{dt}-run", TRUTH_COLLECTION)
        for k in ("CP_PIPE_DIR", "CP_VERIFY_DIR", "CPFRAME_PIPELINES"):
            monkeypatch.delenv(k, raising=False)
        env = {"USER_CALIB_PREFIX": "", "INSTRUMENT": INSTRUMENT, "TICKET": TICKET, "REPO": str(repo.root),
               "RAW_COLLECTION": RAW_RUN, "CALIB_COLLECTIONS": TRUTH_COLLECTION, "TAG": "test", "RERUN": "20241110a",
               "SCRATCH": str(tmp_path / "scratch"), "USER": "tester", "PATH": "/usr/bin:/bin",
               "SELECTION_FLAT_r": "instrument='LSSTComCam' and exposure.observation_type='flat'"}
        template = Path(__file__).parent / "data/lsst/cp_pipe/bps/templates/bps_flat_gradient_reference_r.yaml"
        res = submit_template(template, environ=env, client=local_dask.client, argv=["cpframe", "submit"])
        assert res.counts == {"flat_gradient_reference": 1}
        (ref,) = repo.registry.query_datasets("flat_gradient_reference", collections=[res.run])
        assert ref.data_id["physical_filter"] == "r_03"
        grad = read_flat_gradient(repo.get_path(ref))
        _check(grad, truth, "r")
        assert grad.meta["detectors"] == ids and grad.meta["n_bins"] > 50
        # certified, verified (cpframe's own template) and shown in the report with its figure
        from tests._run_helpers import certify_run

        cert = f"{INSTRUMENT}/calib/{TICKET}/test/flat_gradient_reference-r.20241110a"
        certify_run(repo, res.run, "flat_gradient_reference", cert)
        repo.registry.set_chain(f"{INSTRUMENT}/calib/{TICKET}", [cert], mode="redefine")  # the ticket chain P
        venv = {**env, "VERIFY_RERUN": "20241126a",
                "SELECTION_FLAT_r_V": env["SELECTION_FLAT_r"]}
        vres = submit_template(Path(__file__).parents[1] / "templates/bps_verify_flat_gradient_reference_r.yaml",
                               environ=venv, client=local_dask.client, argv=["cpframe", "submit"])
        from cpframe.report.html import write_report

        rep = write_report(repo, [vres.run, res.run], tmp_path / "report")
        assert rep.verdicts == {"flat_gradient_reference": True}, rep.failures
        index = (rep.output_dir / "index.html").read_text()
        sec = index[index.index('<h2 id="flat_gradient_reference">'):]
        (img,) = [i for i in __import__("re").findall(r'<img src="([^"]+)"', sec) if "flat_gradient" in i]
        assert (rep.output_dir / img).stat().st_size > 5000 and "radial spline" in sec
    finally:
        repo.close()
