"""Curated calibrations as text: validate, extract from a built product, diff.

Calibrations that come from lab measurements or manual editing live as text in a folder
meant to be a git repository (like ``obs_lsst_data``), one sub-folder per instrument::

    CURATED/LSSTComCam/curated.yaml                                 index (camera validity, defect scale)
    CURATED/LSSTComCam/manual_defects_R22_S11_20241001T000000.ecsv  x0, y0, width, height (assembled px)
    CURATED/LSSTComCam/gain_R22_S11_20241001T000000.ecsv            amp, gain [, gain_err, noise]
    CURATED/LSSTComCam/linearity_R22_S11_20241001T000000.ecsv       amp, type, coeff_0, coeff_1, ...
    CURATED/LSSTComCam/crosstalk_R22_S11_20241001T000000.yaml       {detector, coefficients: {source: {victim: c}}}

Each file is valid from the date in its name until the next file of the same kind and
detector.  :func:`validate` checks schema, geometry (inside the detector, real amplifiers)
and overlaps (defect rectangles covering the same pixels); :func:`extract` turns a built
product (``defects``, or the gains of a ``ptc``) of a RUN into such a file for editing;
:func:`diff` compares two files or two folders by content (rectangles, per-amp values),
not by lines.  ``write-curated-calibrations --curated-dir`` writes the defects into a
repository and records the folder's git commit and each file's SHA-256 in provenance
(:func:`cpframe.camera.curated.source_provenance`).
"""

from __future__ import annotations

import datetime
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import yaml

from cpframe.camera.models import load_camera
from cpframe.core.errors import CameraError, UserInputError

__all__ = ["KINDS", "ValidationReport", "diff", "extract", "validate"]

_DET = r"(?P<det>R[0-9X]{2}_S[0-9]{2})"
_DATE = r"(?P<date>\d{8}T\d{6})"
#: kind -> file name pattern.
KINDS = {
    "defects": re.compile(rf"^manual_defects_{_DET}_{_DATE}\.ecsv$"),
    "gain": re.compile(rf"^gain_{_DET}_{_DATE}\.ecsv$"),
    "linearity": re.compile(rf"^linearity_{_DET}_{_DATE}\.ecsv$"),
    "crosstalk": re.compile(rf"^crosstalk_{_DET}_{_DATE}\.yaml$"),
}
_PREFIX = {"defects": "manual_defects", "gain": "gain", "linearity": "linearity", "crosstalk": "crosstalk"}
_IGNORED = re.compile(r"^(curated\.yaml|README.*|\..*|.*~)$")
LINEARITY_TYPES = ("None", "Squared", "Polynomial")
#: Largest crosstalk coefficient accepted (fraction of the source signal).
MAX_CROSSTALK = 0.1


def kind_of(path: str | os.PathLike) -> tuple[str, str, str] | None:
    """``(kind, detector name, date stamp)`` from a curated file name, None if not one.

    >>> kind_of("gain_R22_S11_20241001T000000.ecsv")
    ('gain', 'R22_S11', '20241001T000000')
    """
    name = Path(path).name
    for kind, rx in KINDS.items():
        m = rx.match(name)
        if m:
            return kind, m.group("det"), m.group("date")
    return None


@dataclass
class ValidationReport:
    """What :func:`validate` checked and found."""

    n_files: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        kinds = ", ".join(f"{n} {k}" for k, n in sorted(self.by_kind.items())) or "none"
        head = f"{self.n_files} curated file(s) checked ({kinds}): "
        return head + ("OK" if self.ok else f"{len(self.problems)} problem(s)")


def _read_ecsv(path: Path):
    from astropy.table import Table

    try:
        return Table.read(str(path), format="ascii.ecsv")
    except Exception as err:  # noqa: BLE001 - astropy raises many types for a malformed table
        raise UserInputError(f"{path}: not a readable ECSV table ({str(err).splitlines()[0][:200]})") from None


def _scale_of(meta: dict, folder: Path) -> str:
    idx = folder / "curated.yaml"
    index = (yaml.safe_load(idx.read_text()) or {}) if idx.exists() else {}
    return str(meta.get("scale") or index.get("manual_defects", {}).get("scale", "full"))


def _overlaps(rects: Sequence[tuple[int, int, int, int]]) -> list[tuple[int, int]]:
    """Pairs of row indices whose rectangles share pixels (sweep over x).

    >>> _overlaps([(0, 0, 2, 2), (1, 1, 2, 2), (5, 5, 1, 1)])
    [(0, 1)]
    """
    order = sorted(range(len(rects)), key=lambda i: rects[i][0])
    out, active = [], []
    for i in order:
        x0, y0, w, h = rects[i]
        active = [j for j in active if rects[j][0] + rects[j][2] > x0]
        for j in active:
            _, y1, _, h1 = rects[j]
            if y0 < y1 + h1 and y1 < y0 + h:
                out.append((min(i, j), max(i, j)))
        active.append(i)
    return sorted(out)


def _check_defects(path: Path, det: Any, instrument: str) -> list[str]:
    t = _read_ecsv(path)
    missing = [c for c in ("x0", "y0", "width", "height") if c not in t.colnames]
    if missing:
        return [f"{path}: defects table lacks column(s) {', '.join(missing)}; it needs x0, y0, width, height"]
    problems = []
    meta = dict(t.meta)
    if "detector" in meta and int(meta["detector"]) != det.id:
        problems.append(f"{path}: meta detector {meta['detector']} is not {det.name} (id {det.id}) of the file name")
    scale = _scale_of(meta, path.parent)
    try:
        shape = load_camera(instrument, scale).detector(det.id).shape
    except CameraError as err:
        return [f"{path}: {err}"]
    rects = []
    for i, r in enumerate(t, start=1):
        try:
            x0, y0, w, h = (int(r[c]) for c in ("x0", "y0", "width", "height"))
        except (TypeError, ValueError):
            problems.append(f"{path} row {i}: x0, y0, width, height must be integers")
            continue
        if w < 1 or h < 1 or x0 < 0 or y0 < 0:
            problems.append(f"{path} row {i}: ({x0}, {y0}, {w}, {h}) needs x0, y0 >= 0 and width, height >= 1")
        elif x0 + w > shape[1] or y0 + h > shape[0]:
            problems.append(f"{path} row {i}: rectangle x {x0}..{x0 + w - 1}, y {y0}..{y0 + h - 1} lies outside "
                            f"detector {det.name} ({shape[1]} x {shape[0]} px at scale {scale}); fix or remove it")
        rects.append((x0, y0, w, h))
    for a, b in _overlaps(rects):
        problems.append(f"{path} rows {a + 1} and {b + 1}: rectangles {rects[a]} and {rects[b]} overlap; "
                        "merge them into one")
    return problems


def _amp_rows(path: Path, t: Any, det: Any) -> list[str]:
    problems = []
    if "amp" not in t.colnames:
        return [f"{path}: table lacks column 'amp'"]
    amps = [str(a) for a in t["amp"]]
    unknown = sorted(set(amps) - set(det.amp_names))
    if unknown:
        problems.append(f"{path}: amp(s) {', '.join(unknown)} are not amplifiers of {det.name} "
                        f"({', '.join(det.amp_names)})")
    dup = sorted({a for a in amps if amps.count(a) > 1})
    if dup:
        problems.append(f"{path}: amp(s) {', '.join(dup)} appear more than once")
    absent = [a for a in det.amp_names if a not in amps]
    if absent:
        problems.append(f"{path}: no row for amp(s) {', '.join(absent)}")
    return problems


def _check_gain(path: Path, det: Any) -> list[str]:
    t = _read_ecsv(path)
    problems = _amp_rows(path, t, det)
    if "gain" not in t.colnames:
        return problems + [f"{path}: table lacks column 'gain' (e-/adu)"]
    for r in t:
        g = float(r["gain"])
        if not (math.isfinite(g) and 0 < g < 100):
            problems.append(f"{path} amp {r['amp']}: gain {g} is not a positive e-/adu value")
        if "noise" in t.colnames and not (math.isfinite(float(r["noise"])) and float(r["noise"]) >= 0):
            problems.append(f"{path} amp {r['amp']}: noise {r['noise']} must be >= 0 (e-)")
    return problems


def _check_linearity(path: Path, det: Any) -> list[str]:
    t = _read_ecsv(path)
    problems = _amp_rows(path, t, det)
    coeffs = [c for c in t.colnames if re.fullmatch(r"coeff_\d+", c)]
    if "type" not in t.colnames or not coeffs:
        return problems + [f"{path}: linearity table needs columns type and coeff_0, coeff_1, ..."]
    for r in t:
        if str(r["type"]) not in LINEARITY_TYPES:
            problems.append(f"{path} amp {r['amp']}: type {r['type']!r} is not one of {', '.join(LINEARITY_TYPES)}")
        bad = [c for c in coeffs if not math.isfinite(float(r[c]))]
        if bad:
            problems.append(f"{path} amp {r['amp']}: {', '.join(bad)} not finite")
    return problems


def _check_crosstalk(path: Path, det: Any) -> list[str]:
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        return [f"{path}: not valid YAML ({str(err).splitlines()[0]})"]
    if not isinstance(doc, dict) or not isinstance(doc.get("coefficients"), dict):
        return [f"{path}: needs a mapping 'coefficients: {{SOURCE_AMP: {{VICTIM_AMP: coefficient}}}}'"]
    problems = []
    if doc.get("detector") not in (None, det.name):
        problems.append(f"{path}: detector {doc.get('detector')!r} is not {det.name} of the file name")
    for src, row in doc["coefficients"].items():
        if str(src) not in det.amp_names:
            problems.append(f"{path}: source amp {src} is not an amplifier of {det.name}")
            continue
        for victim, c in (row or {}).items():
            if str(victim) not in det.amp_names:
                problems.append(f"{path}: {src} -> {victim}: {victim} is not an amplifier of {det.name}")
            elif str(victim) == str(src):
                problems.append(f"{path}: {src} -> {src}: an amplifier has no crosstalk onto itself")
            elif not isinstance(c, (int, float)) or not math.isfinite(c) or abs(c) >= MAX_CROSSTALK:
                problems.append(f"{path}: {src} -> {victim}: coefficient {c!r} must be a number below "
                                f"{MAX_CROSSTALK} in size")
    return problems


def validate(root: str | os.PathLike, instrument: str | None = None) -> ValidationReport:
    """Check every curated file under ``root`` (or ``root/<instrument>``).

    ``root`` may be the folder of all instruments (each sub-folder with a ``curated.yaml``) or
    one instrument's folder.  Every problem is collected (nothing raised for bad content).

    Raises
    ------
    UserInputError
        ``root`` is not a curated folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise UserInputError(f"curated folder {root} does not exist.")
    if instrument:
        folders = [(instrument, root / instrument if (root / instrument).is_dir() else root)]
    elif (root / "curated.yaml").exists():
        folders = [(root.name, root)]
    else:
        folders = [(d.name, d) for d in sorted(root.iterdir()) if (d / "curated.yaml").exists()]
    if not folders:
        raise UserInputError(f"{root} holds no curated.yaml (neither itself nor a sub-folder per instrument); "
                             "give the folder of the curated calibrations.")
    report = ValidationReport()
    for inst, folder in folders:
        try:
            camera = load_camera(inst)
        except CameraError as err:
            report.problems.append(f"{folder}: {err}")
            continue
        for path in sorted(folder.iterdir()):
            if path.is_dir() or _IGNORED.match(path.name):
                continue
            k = kind_of(path)
            if k is None:
                report.problems.append(f"{path}: not a curated file name (<kind>_<DETNAME>_<YYYYMMDDTHHMMSS>.ecsv|yaml "
                                       f"with kind {', '.join(_PREFIX.values())})")
                continue
            kind, det_name, _ = k
            report.n_files += 1
            report.by_kind[kind] = report.by_kind.get(kind, 0) + 1
            try:
                det = camera.detector(det_name)
            except (CameraError, UserInputError) as err:
                report.problems.append(f"{path}: {err}")
                continue
            try:
                check = {"defects": lambda: _check_defects(path, det, inst), "gain": lambda: _check_gain(path, det),
                         "linearity": lambda: _check_linearity(path, det),
                         "crosstalk": lambda: _check_crosstalk(path, det)}[kind]
                report.problems += check()
            except UserInputError as err:
                report.problems.append(str(err))
    return report


# -- diff --------------------------------------------------------------------------------------------


def _content(path: Path) -> tuple[str, Any]:
    k = kind_of(path)
    kind = k[0] if k else ("crosstalk" if path.suffix == ".yaml" else "table")
    if kind == "crosstalk":
        doc = yaml.safe_load(path.read_text()) or {}
        return kind, {(str(s), str(v)): float(c) for s, row in (doc.get("coefficients") or {}).items()
                      for v, c in (row or {}).items()}
    t = _read_ecsv(path)
    if {"x0", "y0", "width", "height"} <= set(t.colnames):
        return "defects", {(int(r["x0"]), int(r["y0"]), int(r["width"]), int(r["height"])) for r in t}
    if "amp" in t.colnames:
        cols = [c for c in t.colnames if c != "amp"]
        return kind, {str(r["amp"]): {c: r[c].item() if hasattr(r[c], "item") else r[c] for c in cols} for r in t}
    raise UserInputError(f"{path}: neither a defects table nor a per-amp table; cannot compare it.")


def _diff_files(a: Path, b: Path) -> list[str]:
    ka, ca = _content(a)
    kb, cb = _content(b)
    if ka != kb:
        return [f"~ {b.name}: kind changed ({ka} -> {kb})"]
    out = []
    if ka == "defects":
        out += [f"- rectangle x0={r[0]} y0={r[1]} width={r[2]} height={r[3]}" for r in sorted(ca - cb)]
        out += [f"+ rectangle x0={r[0]} y0={r[1]} width={r[2]} height={r[3]}" for r in sorted(cb - ca)]
    elif ka == "crosstalk":
        for key in sorted(set(ca) | set(cb)):
            if ca.get(key) != cb.get(key):
                out.append(f"~ {key[0]} -> {key[1]}: {ca.get(key, '-')} -> {cb.get(key, '-')}")
    else:
        for amp in sorted(set(ca) | set(cb)):
            if amp not in ca or amp not in cb:
                out.append(f"{'+' if amp in cb else '-'} amp {amp}")
                continue
            for col in sorted(set(ca[amp]) | set(cb[amp])):
                va, vb = ca[amp].get(col), cb[amp].get(col)
                if va != vb:
                    out.append(f"~ amp {amp} {col}: {va} -> {vb}")
    return out


def diff(a: str | os.PathLike, b: str | os.PathLike) -> list[str]:
    """Content differences from ``a`` to ``b`` (two files, or two folders matched by file name).

    Lines start with ``+`` (only in b), ``-`` (only in a) or ``~`` (changed); empty = same content.
    """
    a, b = Path(a), Path(b)
    for p in (a, b):
        if not p.exists():
            raise UserInputError(f"{p}: no such file or folder.")
    if a.is_file() and b.is_file():
        return _diff_files(a, b)
    if a.is_dir() != b.is_dir():
        raise UserInputError(f"compare two files or two folders, not {a} with {b}.")
    files_a = {p.relative_to(a): p for p in a.rglob("*") if p.is_file() and kind_of(p)}
    files_b = {p.relative_to(b): p for p in b.rglob("*") if p.is_file() and kind_of(p)}
    out = []
    for rel in sorted(set(files_a) | set(files_b)):
        if rel not in files_b:
            out.append(f"- {rel}")
        elif rel not in files_a:
            out.append(f"+ {rel}")
        else:
            lines = _diff_files(files_a[rel], files_b[rel])
            if lines:
                out.append(f"~ {rel}:")
                out += [f"    {line}" for line in lines]
    return out


# -- extract -----------------------------------------------------------------------------------------

EXTRACTABLE = {"defects": "defects", "gain": "ptc"}


def extract(repo: Any, kind: str, run: str, out: str | os.PathLike, *, instrument: str | None = None,
            valid_from: str | None = None) -> list[Path]:
    """Write the ``kind`` products of RUN (or a chain) as editable curated files in ``out/<INSTRUMENT>/``.

    ``defects`` -> ``manual_defects_<DET>_<date>.ecsv`` (rectangles, at the product's scale);
    ``gain`` -> ``gain_<DET>_<date>.ecsv`` from the ``ptc`` (gain, gain_err, noise per amp).
    ``valid_from`` (ISO TAI, default today 00:00) names the files.  Existing files are never
    overwritten.

    Raises
    ------
    UserInputError
        Unknown kind, no such product in RUN, a file that already exists (nothing written).
    UnknownCollectionError
        RUN does not exist.
    """
    from cpframe.camera.curated import write_defects
    from cpframe.core.model import parse_tai
    from cpframe.science.imageio import read_defects, read_ptc

    if kind not in EXTRACTABLE:
        raise UserInputError(f"cannot extract {kind!r}: built products give {', '.join(EXTRACTABLE)} "
                             "(crosstalk and linearity are written by hand).")
    dtype = EXTRACTABLE[kind]
    refs = repo.registry.query_datasets(dtype, collections=[run], find_first=True)
    if instrument:
        refs = [r for r in refs if r.data_id.get("instrument") == instrument]
    if not refs:
        raise UserInputError(f"no {dtype} dataset in {run!r}; `cpframe query-datasets REPO {dtype} "
                             f"--collections {run}` lists what is there.")
    when = valid_from or datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT00:00:00")
    parse_tai(when, "--valid-from")
    stamp = re.sub(r"[-:]", "", when.split(".")[0])
    if not re.fullmatch(r"\d{8}T\d{6}", stamp):
        raise UserInputError(f"--valid-from {when!r}: give an ISO date and time, e.g. 2025-01-01T00:00:00.")
    plans = []
    for ref in sorted(refs, key=lambda r: int(r.data_id["detector"])):
        inst = ref.data_id["instrument"]
        det = load_camera(inst).detector(int(ref.data_id["detector"]))
        target = Path(out) / inst / f"{_PREFIX[kind]}_{det.name}_{stamp}.ecsv"
        plans.append((ref, inst, det, target))
    exists = [str(t) for *_, t in plans if t.exists()]
    if exists:
        raise UserInputError(f"{len(exists)} file(s) already exist, not overwritten: {', '.join(exists[:3])}; "
                             "use another --valid-from or --out.")
    written = []
    for ref, inst, det, target in plans:
        target.parent.mkdir(parents=True, exist_ok=True)
        src = repo.get_path(ref)
        origin = f"extracted from {dtype} {ref.id} of RUN {ref.run}"
        if kind == "defects":
            rects, meta = read_defects(src)
            scale = str(meta.get("scale") or _product_scale(repo, inst, det))
            written.append(write_defects(target, rects, inst, det.id, when, detector_name=det.name, scale=scale,
                                         source=origin))
        else:
            from astropy.table import Table

            amps, _meta = read_ptc(src)
            rows = [(a, float(v["gain"]), float(v.get("gain_err", float("nan"))), float(v.get("noise", float("nan"))))
                    for a, v in amps.items()]
            t = Table(rows=rows, names=("amp", "gain", "gain_err", "noise"))
            t.meta.update({"instrument": inst, "detector": det.id, "detector_name": det.name, "calib_date": when,
                           "units": {"gain": "e-/adu", "noise": "e-"}, "source": origin})
            tmp = target.with_name(f".{target.name}.tmp")
            t.write(str(tmp), format="ascii.ecsv", overwrite=True)
            os.replace(tmp, target)
            written.append(target)
    return written


def _product_scale(repo: Any, instrument: str, det: Any) -> str:
    from cpframe.camera.curated import _repo_scale

    return _repo_scale(repo, instrument)
