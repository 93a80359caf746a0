"""Raw primary headers in the real cameras' format (written) and cpframe's view of them (read).

Writing (:func:`raw_header_cards`): the simulator writes the keys, spellings and value
types the Rubin cameras write (HEADVER 2): ``INSTRUME`` as the camera spells it
(``lsstCam``, ``ComCam``, ``LATISS``), ``DAYOBS`` as a *string*, ``SEQNUM``, ``CONTRLLR``,
``OBSID``, ``GROUPID``, ``RAFTBAY``/``CCDSLOT``, ``LSST_NUM``, ``CCD_MANU``/``CCD_TYPE``,
upper-case ``IMGTYPE``, ``TESTTYPE``/``REASON``/``PROGRAM``, ``FILTER`` (+ ``FILTER2`` or, for
LATISS, ``GRATING``), ``EXPTIME``/``SHUTTIME``/``DARKTIME``, ``DATE-BEG``/``MJD-BEG``/
``DATE-END``/``MJD-END`` in TAI.  There is no ``DETECTOR`` or ``EXPID`` key: those come from
translation, as for real data.  cpframe adds ``CAMSCALE`` (full or mini), ``CPFSEED`` and
``ORIGIN``, which no Rubin reader looks at.

Reading (:func:`normalized_cards`): every reader of a raw goes through
``cpframe.camera.translators`` and gets cpframe's normalized cards (``INSTRUME`` as the camera
model's name, ``DETECTOR``, ``DETNAME``, ``EXPID``, ``DAYOBS`` int, ``SEQNUM``, ``FILTER`` = the
physical filter, ``IMGTYPE`` = the observation type, ``EXPTIME``, ``DARKTIME``, ``DATE-BEG``/
``DATE-END`` TAI).  Processed products (ISR outputs, combined calibrations) carry these.  In a
submission the same cards come from the registry instead (:func:`registry_cards`), as ingest
translated them, and the workers need no translator (docs/raw-headers.md).
"""

from __future__ import annotations

from typing import Any, Mapping

from cpframe.core.model import ns_to_iso

__all__ = ["INSTRUME_SPELLING", "raw_header_cards", "normalized_cards", "registry_cards", "split_physical_filter"]

#: How each camera writes ``INSTRUME`` and ``TELESCOP`` today.
INSTRUME_SPELLING = {"LSSTCam": "lsstCam", "LSSTComCam": "ComCam", "LATISS": "LATISS"}
_TELESCOP = {"LSSTCam": "Simonyi Survey Telescope", "LSSTComCam": "Simonyi Survey Telescope",
             "LATISS": "LSST AuxTelescope"}
_CCD_TYPE = {"ITL": "3800C", "ITL_G": "3800C", "ITL_WF": "4400B", "E2V": "CCD250"}
#: IMGTYPE as the camera control system writes it, per cpframe observation type.
_IMGTYPE = {"science": "OBJECT"}


def _mjd(ns: int) -> float:
    return 40587.0 + ns / 86400e9


def split_physical_filter(instrument: str, physical_filter: str) -> list[tuple[str, str, str]]:
    """Filter cards ``(key, value, comment)`` that translate back to ``physical_filter``.

    >>> split_physical_filter("LATISS", "SDSSr_65mm~empty")
    [('FILTER', 'SDSSr_65mm', 'filter'), ('GRATING', 'empty_1', 'grating')]
    >>> split_physical_filter("LSSTCam", "r_57")
    [('FILTER', 'r_57', 'filter')]
    """
    parts = physical_filter.split("~")
    if instrument == "LATISS":
        filt, grating = (parts + ["empty"])[:2]
        return [("FILTER", "empty_1" if filt == "empty" else filt, "filter"),
                ("GRATING", "empty_1" if grating == "empty" else grating, "grating")]
    cards = [("FILTER", parts[0], "filter")]
    if len(parts) > 1:
        cards.append(("FILTER2", "~".join(parts[1:]), "second filter"))
    return cards


def raw_header_cards(camera: Any, detector_id: int, spec: Any, seed: int) -> list[tuple]:
    """Primary-header cards ``(key, value, comment)`` of a simulated raw, real-camera format.

    ``spec`` is a ``cpframe.camera.simulate.ExposureSpec``.
    """
    det = camera.detector(detector_id)
    b_ns, e_ns = spec.begin_ns, spec.end_ns
    begin, end = ns_to_iso(b_ns), ns_to_iso(e_ns)
    obs_type = spec.observation_type.lower()
    shutter = 0.0 if obs_type in ("bias", "dark") else float(spec.exposure_time)
    raft, slot = (("R00", "S00") if camera.name == "LATISS" else (det.raft, det.name_in_raft))
    cards = [
        ("DATE", end, "file creation date (TAI)"),
        ("MJD", _mjd(e_ns), "file creation date, MJD (TAI)"),
        ("IMGTYPE", _IMGTYPE.get(obs_type, obs_type.upper()), "image type"),
        ("DATE-OBS", begin, "start of exposure (TAI)"),
        ("MJD-OBS", _mjd(b_ns), "start of exposure, MJD (TAI)"),
        ("OBSID", spec.obs_id(camera.name), "observation id"),
        ("DATE-BEG", begin, "start of exposure (TAI)"),
        ("MJD-BEG", _mjd(b_ns), "start of exposure, MJD (TAI)"),
        ("DATE-END", end, "end of exposure (TAI)"),
        ("MJD-END", _mjd(e_ns), "end of exposure, MJD (TAI)"),
        ("TIMESYS", "TAI", "time scale of DATE-* and MJD-*"),
        ("GROUPID", begin[:23], "group of exposures"),
        ("INSTRUME", INSTRUME_SPELLING.get(camera.name, camera.name), "instrument"),
        ("TELESCOP", _TELESCOP.get(camera.name, camera.name), "telescope"),
        ("OBJECT", "UNKNOWN" if obs_type != "science" else "cpframe_field", "target"),
        ("TESTTYPE", obs_type.upper(), "test type"),
        ("CONTRLLR", "O", "controller (O = OCS)"),
        ("DAYOBS", str(int(spec.day_obs)), "observing day YYYYMMDD"),
        ("SEQNUM", int(spec.seq_num), "sequence number within the day"),
        ("PROGRAM", spec.science_program or None, "science program"),
        ("REASON", spec.observation_reason or None, "observation reason"),
        ("CURINDEX", 1, "index in the group (1-based)"),
        ("MAXINDEX", 1, "exposures in the group"),
        ("CCD_MANU", det.vendor, "CCD manufacturer"),
        ("CCD_TYPE", _CCD_TYPE.get(det.sensor_type, det.sensor_type), "CCD model"),
        ("CCDSLOT", slot, "sensor slot in the raft"),
        ("RAFTBAY", raft, "raft bay"),
        ("LSST_NUM", det.serial, "sensor serial"),
        ("FILTBAND", camera.band_of(spec.physical_filter), "band"),
        *split_physical_filter(camera.name, spec.physical_filter),
        ("EXPTIME", float(spec.exposure_time), "[s] requested exposure time"),
        ("DARKTIME", float(spec.dark_time), "[s] dark time"),
        ("SHUTTIME", shutter, "[s] shutter open time"),
        ("HEADVER", 2, "header version"),
        ("CAMSCALE", camera.scale, "cpframe camera scale (full or mini)"),
        ("CPFSEED", int(seed), "cpframe simulator seed"),
        ("ORIGIN", "cpframe simulate", "written by"),
    ]
    return cards


def normalized_cards(header: Mapping[str, Any], filename: str | None = None) -> dict[str, Any]:
    """cpframe's cards for a raw ``header`` (module docstring), through the translators.

    A lighter path than ingest's ``ObservationInfo`` (this runs on every raw read): the header
    is repaired (``fix_header``) and the translator's methods are called directly; dates are
    kept as the header has them.

    Raises
    ------
    ValueError
        The header cannot be translated (message names the property and the reason).
    """
    import warnings

    from astro_metadata_translator import fix_header

    from cpframe.camera.models import _camera_yaml
    from cpframe.camera.translators import find_translator

    hdr = dict(header)
    cls = find_translator(hdr, filename)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fix_header(hdr, translator_class=cls, filename=filename)
        tr = cls(hdr, filename=filename)
        values: dict[str, Any] = {}
        for prop in ("instrument", "detector_num", "detector_group", "detector_name", "exposure_id",
                     "observing_day", "observation_counter", "physical_filter", "observation_type",
                     "exposure_time", "dark_time"):
            try:
                values[prop] = getattr(tr, f"to_{prop}")()
            except Exception as err:  # KeyError/ValueError/TypeError from a bad or missing card
                raise ValueError(f"cannot translate {prop} ({cls.__name__}): "
                                 f"{err.args[0] if err.args else err}") from None
    try:
        names = {int(d["id"]): d["name"] for d in _camera_yaml(values["instrument"])["detectors"]}
    except Exception as err:  # unknown to cpframe: no camera model
        raise ValueError(f"instrument {values['instrument']!r} has no cpframe camera model ({err})") from None
    det = int(values["detector_num"])
    cards = {
        "INSTRUME": values["instrument"],
        "DETECTOR": det,
        "DETNAME": names.get(det, f"{values['detector_group']}_{values['detector_name']}"),
        "EXPID": int(values["exposure_id"]),
        "DAYOBS": int(values["observing_day"]),
        "SEQNUM": int(values["observation_counter"]),
        "FILTER": str(values["physical_filter"]),
        "IMGTYPE": str(values["observation_type"]),
        "EXPTIME": float(values["exposure_time"].to_value("s")),
        "DARKTIME": float(values["dark_time"].to_value("s")),
    }
    for key in ("DATE-BEG", "DATE-END", "TIMESYS"):
        if hdr.get(key) is not None:
            cards[key] = hdr[key]
    return cards


def registry_cards(exposure: Mapping[str, Any], detector: int) -> dict[str, Any]:
    """:func:`normalized_cards`' translated cards of a raw, from the registry's records instead of its header.

    Ingest translated the raw with the same translators (``cpframe.repository.ingest.exposure_record``), so its
    exposure record holds the same values; the planner sends these to the workers with each quantum's raws, and
    a worker reading a raw then needs no translator (:func:`cpframe.science.imageio.remember_raw_cards`; issue 14:
    importing astro_metadata_translator was 0.2-0.3 s of every local cluster's start).  ``DATE-BEG``/``DATE-END``
    stay the header's own: the reader keeps these cards only when those dates are the record's timespan, else it
    translates the header (a header repair changed the dates).
    """
    from cpframe.camera.models import _camera_yaml

    instrument = str(exposure["instrument"])
    det = int(detector)
    names = {int(d["id"]): d["name"] for d in _camera_yaml(instrument)["detectors"]}
    return {
        "INSTRUME": instrument,
        "DETECTOR": det,
        "DETNAME": names[det],
        "EXPID": int(exposure["id"]),
        "DAYOBS": int(exposure["day_obs"]),
        "SEQNUM": int(exposure["seq_num"]),
        "FILTER": str(exposure["physical_filter"]),
        "IMGTYPE": str(exposure["observation_type"]),
        "EXPTIME": float(exposure["exposure_time"]),
        "DARKTIME": float(exposure["dark_time"]),
    }
