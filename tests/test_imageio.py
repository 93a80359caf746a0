"""File formats: fits-masked (strips, headers), fits-raw, ecsv-defects, fits-ptc; checked with astropy."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits

from cpframe.camera.models import load_camera
from cpframe.core.errors import UserInputError
from cpframe.science.imageio import (
    MASK_BITS,
    FileFormatError,
    MaskedWriter,
    amp_boxes,
    detector_from_header,
    format_card,
    header_bytes,
    mask_names,
    mask_value,
    masked_layout,
    open_masked,
    parse_header,
    read_defects,
    read_header,
    read_masked,
    read_ptc,
    read_raw,
    read_rows,
    write_defects,
    write_masked,
    write_ptc,
)


def _planes(shape=(33, 47), seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(0, 100, shape).astype(np.float32), rng.integers(0, 4096, shape, dtype=np.int32),
            rng.uniform(0, 10, shape).astype(np.float32))


HEADER = {"EXPID": 2024111000012, "EXPTIME": 2.5, "OBSTYPE": "bias", "FLAG": True, "NOTE": "it's quoted",
          "LSST ISR OVERSCAN RESIDUAL SERIAL STDEV C10": 4.123456789012345, "CPP_INPUT_12": 7,
          "NANVAL": float("nan"), "NPINT": np.int64(5), "NPFLOAT": np.float32(0.25)}


def test_masked_round_trip_and_astropy_agrees(tmp_path):
    img, msk, var = _planes()
    p = write_masked(tmp_path / "m.fits", img, msk, var, HEADER)
    back = read_masked(p)
    np.testing.assert_array_equal(back.image, img)
    np.testing.assert_array_equal(back.mask, msk)
    np.testing.assert_array_equal(back.variance, var)
    h = back.header
    assert h["EXPID"] == 2024111000012 and h["EXPTIME"] == 2.5 and h["FLAG"] is True
    assert h["NOTE"] == "it's quoted" and h["CPP_INPUT_12"] == 7 and h["NANVAL"] == "nan"
    assert h["LSST ISR OVERSCAN RESIDUAL SERIAL STDEV C10"] == 4.123456789012345
    assert h["NPINT"] == 5 and h["NPFLOAT"] == 0.25
    # an independent reader sees the same file
    with fits.open(p) as hdul:
        assert [x.name for x in hdul] == ["PRIMARY", "IMAGE", "MASK", "VARIANCE"]
        np.testing.assert_array_equal(hdul["IMAGE"].data, img)
        np.testing.assert_array_equal(hdul["MASK"].data, msk)
        np.testing.assert_array_equal(hdul["VARIANCE"].data, var)
        assert hdul["MASK"].header["MP_UNMASKEDNAN"] == MASK_BITS["UNMASKEDNAN"] == 9
        assert hdul[0].header["LSST ISR OVERSCAN RESIDUAL SERIAL STDEV C10"] == 4.123456789012345
        assert hdul[0].header["NOTE"] == "it's quoted"


def test_rows_read_as_strips(tmp_path):
    img, msk, var = _planes((100, 20))
    p = write_masked(tmp_path / "m.fits", img, msk, var)
    lay = masked_layout(p)
    assert lay.shape == (100, 20)
    np.testing.assert_array_equal(read_rows(lay, "IMAGE", 30, 45), img[30:45])
    np.testing.assert_array_equal(read_rows(lay, "MASK", 99, 100), msk[99:100])
    out = np.empty((10, 20), np.float32)
    read_rows(lay, "VARIANCE", 0, 10, out=out)
    np.testing.assert_array_equal(out, var[:10])
    ds = open_masked(p, strip_rows=7)
    assert ds["image"].data.chunks[0][:2] == (7, 7)
    np.testing.assert_array_equal(ds["mask"].values, msk)
    assert ds.attrs["header"]["SIMPLE"] is True


def test_writer_strips_and_abort(tmp_path):
    img, msk, var = _planes((10, 8))
    with MaskedWriter(tmp_path / "w.fits", (10, 8), {"A": 1}) as w:
        w.write_rows(5, img[5:], msk[5:], var[5:])
        w.write_rows(0, img[:5], msk[:5], var[:5])
    np.testing.assert_array_equal(read_masked(tmp_path / "w.fits").image, img)
    with pytest.raises(RuntimeError):
        with MaskedWriter(tmp_path / "x.fits", (10, 8)) as w:
            w.write_rows(0, img, msk, var)
            raise RuntimeError("interrupted")
    assert not (tmp_path / "x.fits").exists()
    assert sorted(q.name for q in tmp_path.iterdir()) == ["w.fits"]  # no temporary left


def test_bad_files_are_reported(tmp_path):
    (tmp_path / "t.fits").write_bytes(b"SIMPLE  =                    T" + b" " * 2850)
    with pytest.raises(FileFormatError, match="t.fits"):
        masked_layout(tmp_path / "t.fits")
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(np.zeros((2, 2), np.float32), name="IMAGE")]).writeto(
        tmp_path / "two.fits")
    with pytest.raises(FileFormatError, match="needs IMAGE, MASK and VARIANCE.*found PRIMARY, IMAGE"):
        masked_layout(tmp_path / "two.fits")
    img, msk, var = _planes((50, 50))
    p = write_masked(tmp_path / "cut.fits", img, msk, var)
    data = p.read_bytes()
    (tmp_path / "cut.fits").write_bytes(data[: len(data) // 2])
    with pytest.raises(FileFormatError, match="truncated"):
        masked_layout(tmp_path / "cut.fits")
    with pytest.raises(FileFormatError, match="not a fits-raw file .*truncated"):
        read_raw(p)
    whole = write_masked(tmp_path / "whole.fits", img, msk, var)
    with pytest.raises(FileFormatError, match="not a fits-raw file .primary header has no INSTRUME"):
        read_raw(whole)


def test_cards_and_parser():
    assert len(format_card("LONGNAME_X", 1)) == 80 and format_card("LONGNAME_X", 1).startswith("HIERARCH")
    long = format_card("HIERARCH_LIST", "x" * 200)
    assert len(long) == 80 and long.rstrip().endswith("...'")
    h = parse_header(header_bytes([("A", 1.0e-12), ("B", -3), ("C", "x'y"), ("D", False), ("E", None)]))
    assert h == {"A": 1e-12, "B": -3, "C": "x'y", "D": False, "E": None}
    astro = fits.Header.fromstring(header_bytes([("A", 1.0e-12), ("LSST ISR UNITS", "adu")]).decode())
    assert astro["A"] == 1e-12 and astro["LSST ISR UNITS"] == "adu"


def test_raw_reader_on_simulated_file(tmp_path):
    from cpframe.camera.simulate import ExposureSpec, make_truth, simulate_detector, write_raw

    cam = load_camera("LSSTComCam", "mini")
    spec = ExposureSpec(20241110, 4, "bias", "r_03", 0.0, 0.0, "2024-11-10T20:00:00", "bias", "T", 0.0)
    segs = simulate_detector(cam, 4, spec, make_truth(cam, 1), 1)
    p = write_raw(tmp_path / "r.fits", cam, 4, spec, segs, 1)
    raw = read_raw(p)
    assert raw.detector.id == 4 and raw.camera.scale == "mini" and raw.exposure_id == spec.exposure_id
    with fits.open(p) as hdul:
        for amp, seg in zip(raw.detector.amps, segs):
            np.testing.assert_array_equal(raw.segments[amp.name], hdul["SEGMENT" + amp.name[1:]].data)
            np.testing.assert_array_equal(raw.segments[amp.name], seg)
    assert read_header(p)["IMGTYPE"] == "BIAS"  # the cameras write upper case


def test_defects_and_ptc_files(tmp_path):
    boxes = [(0, 0, 1, 10), (5, 7, 3, 2)]
    p = write_defects(tmp_path / "d.ecsv", boxes, {"instrument": "LATISS", "detector": np.int64(0)})
    got, meta = read_defects(p)
    assert got == boxes and meta["instrument"] == "LATISS" and meta["n_pixels"] == 16
    assert "x0 y0 width height" in p.read_text()  # reviewable text
    rows = [{"amp": a, "gain": 1.5 + i, "gain_err": 0.01, "noise": 6.0, "noise_err": 0.1, "turnoff": 5e4, "a00": -1e-6,
             "n_pairs": 3, "raw_means": [1.0, 2.0, 3.0][: 3 - i], "raw_vars": [1.0, 2.0, 3.0][: 3 - i],
             "exp_times": [1.0, 2.0, 3.0][: 3 - i], "mask": [True, False, True][: 3 - i],
             "overscan_noise": [4.0, 4.0, 4.0][: 3 - i]} for i, a in enumerate(["C10", "C11"])]
    p = write_ptc(tmp_path / "ptc.fits", rows, {"DETECTOR": 3})
    got, header = read_ptc(p)
    assert header["DETECTOR"] == 3 and got["C11"]["gain"] == 2.5
    np.testing.assert_array_equal(got["C10"]["mask"], [True, False, True])
    np.testing.assert_array_equal(got["C11"]["raw_means"], [1.0, 2.0])
    with fits.open(p) as hdul:
        assert list(hdul["PTC"].columns.names) == ["amp", "gain", "gain_err", "noise", "noise_err", "turnoff", "a00",
                                                   "n_pairs", "raw_means", "raw_vars", "exp_times", "mask",
                                                   "overscan_noise"]


def test_mask_planes():
    assert mask_value(["BAD", "SAT", "CR"]) == 0b1011
    assert mask_names(mask_value(["NO_DATA", "EDGE"])) == ["EDGE", "NO_DATA"]
    with pytest.raises(UserInputError, match="unknown mask plane.*'COSMIC'.*known planes: BAD"):
        mask_value(["COSMIC"])


def test_detector_and_amp_boxes_from_header():
    det = load_camera("LSSTComCam", "mini").detector(4)
    h = {"INSTRUME": "LSSTComCam", "CAMSCALE": "MINI", "DETECTOR": 4}
    assert detector_from_header(h) == det and detector_from_header(h, det.shape) == det
    assert [b for _, b in amp_boxes(h, det.shape)] == [a.bbox for a in det.amps]
    whole = [("ALL", (slice(0, 5), slice(0, 7)))]
    assert detector_from_header(h, (5, 7)) is None and amp_boxes(h, (5, 7)) == whole  # other shape
    assert detector_from_header({"INSTRUME": "LSSTComCam"}) is None  # no DETECTOR
    assert amp_boxes({**h, "INSTRUME": "NoSuchCam"}, (5, 7)) == whole


def test_write_masked_knows_the_sha256_of_the_file_it_wrote(tmp_path):
    """write_masked hashes the bytes as it writes them, in file order; run_quantum takes that digest instead of
    reading the file back, once, and only while the file is unchanged."""
    import os

    from cpframe.core.files import remember_sha256, take_remembered_sha256
    from cpframe.repository.datastore import sha256_file

    rng = np.random.default_rng(4)
    for shape in [(1, 1), (3, 5), (300, 77), (513, 40)]:  # one row block, several, a plane padded to 2880 bytes
        im = rng.normal(size=shape).astype(np.float32)
        mk = rng.integers(0, 1 << 12, shape).astype(np.int32)
        path = tmp_path / f"m{shape[0]}x{shape[1]}.fits"
        write_masked(path, im, mk, np.abs(im), {"CPFTEST": 1})
        assert take_remembered_sha256(path) == sha256_file(path)
        assert take_remembered_sha256(path) is None  # used once
    # a file changed after its digest was recorded is read again
    remember_sha256(path, "sha256:" + "0" * 64)
    with open(path, "r+b") as f:
        f.seek(-1, os.SEEK_END)
        f.write(b"\x01")
    os.utime(path, ns=(1, 1))  # a new modification time, whatever the clock's resolution
    assert take_remembered_sha256(path) is None
