"""Static HTML report over verification and generation collections (spec verification.md §6).

:func:`write_report` finds, per calibration type (bias, dark, flat, defects, ptc,
science), the calibration products and the verification datasets in the given
collections -- find-first, in the order given (verification collections first, then
generation collections, as DMTN-222 does) -- and writes to ``OUTPUT_DIR``:

``index.html``
    the verdict per calibration type and test (failures in red), then per type:
    focal-plane mosaics of the products and of the verification residuals, metric
    plots across exposures and nights, the Results table (embedded) and the failures;
``<type>_det.html`` / ``<type>_exp.html``
    per detector (products, PTC curves, provenance of each product: its RUN and its
    ``CPP_INPUT_*`` inputs) and per exposure (residual mosaic, verdict);
``provenance.html``, ``manifest.html``, ``navigation.html``
    the RUNs' stored provenance, every dataset used, the links;
``src/``, ``assets/``
    PNG renderings and HTML tables; CSS and the script that marks loaded images.

The report never recomputes pass/fail: the verdict is the ``*_VERIFY_*`` columns of the
Results tables and ``SUCCESS`` / ``FAILURES`` of the Summary (spec §6.4).  PNG files are
named after the dataset ids they show, so an existing one is reused unless
``do_overwrite`` (ids never change meaning).
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import json
import re
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from cpframe.camera.models import Camera, Detector, load_camera
from cpframe.core.errors import UserInputError
from cpframe.core.model import DatasetRef
from cpframe.report.anaglyph import split_anaglyph_flats
from cpframe.report.caltypes import CALTYPE_PRODUCTS, caltype_figures
from cpframe.report.single_led import mosaic_group, product_types
from cpframe.report.values import COLUMN_UNITS, _floats, _fmt, overall_verdict, product_units, verify_command
from cpframe.verify.core import get_stage
from cpframe.verify.results import atomic_write_text, read_results, read_stats
from cpframe.verify.stats import header_value

__all__ = ["NO_DATASETS_MESSAGE", "REPORT_STAGES", "ReportResult", "ReportStage",
           "write_report"]

#: Message when the collections hold nothing to report on (tests check it).
NO_DATASETS_MESSAGE = "no calibration or verification datasets found"


@dataclass(frozen=True)
class ReportStage:
    """One calibration type in the report."""

    key: str
    """Page prefix and stage key (``bias``)."""
    stage: str
    """Verification stage name (``BIAS``)."""
    product: str | None
    """Dataset type of the calibration product (None for science)."""
    title: str
    metrics: tuple[tuple[str, str], ...] = ()
    """(statistic, label) plotted across exposures, from the Results table."""
    description: str = ""

    @property
    def verify_prefix(self) -> str:
        return f"verify{get_stage(self.stage).type_name}"


REPORT_STAGES: tuple[ReportStage, ...] = (
    ReportStage("bias", "BIAS", "bias", "Bias", (("NOISE", "clipped noise (e-)"), ("MEAN", "mean (e-)")),
                "Bias residuals: ISR with the bias under test; mean, noise and cosmic-ray-repaired noise per amp."),
    ReportStage("dark", "DARK", "dark", "Dark", (("NOISE", "clipped noise (e-)"), ("MEAN", "mean (e-)")),
                "Dark residuals: ISR with bias and the dark under test; same tests as bias."),
    ReportStage("flat", "FLAT", "flat", "Flat", (("NOISE", "clipped noise (e-)"), ("MEAN", "mean (e-)")),
                "Flat residuals: ISR with the flat under test; photon noise per amp, amp and detector scatter."),
    ReportStage("flat_anaglyph", "FLAT_ANAGLYPH", "flat", "Anaglyph flat", (("NOISE", "clipped noise (e-)"),),
                "Weighted mix of a blue and a red LED's gradient-corrected flats (certified as the band's flat); "
                "the flat's tests on the band's flats, ISR with it."),
    ReportStage("flat_single_led", "FLAT_SINGLE_LED", "flat", "Single-LED flat", (("NOISE", "clipped noise (e-)"),),
                "One LED's flat (certified as flat_<LED>); the flat's tests on that LED's flats, ISR with it."),
    ReportStage("defects", "DEFECTS", "defects", "Defects", (("STAT_OUTLIERS", "improbable pixels"),
                                                            ("FRAC", "defect fraction")),
                "Images with and without the defects under test; outliers the defects should remove."),
    ReportStage("ptc", "PTC", "ptc", "PTC", (), "PTC gain, read noise and turnoff per amp against nominal values."),
    ReportStage("linearizer", "LINEARITY", "linearizer", "Linearizer", (),
                "Per-amp linearity correction: residual non-linearity of its ramp before/after, coefficient limits."),
    ReportStage("crosstalk", "CROSSTALK", "crosstalk", "Crosstalk", (),
                "Crosstalk matrix per detector; residual crosstalk after ISR with it must not be significant."),
    ReportStage("cti", "CTI", "cti", "CTI", (),
                "Serial CTI and trap per amp from the flats' overscan (EPER); CTI below the sensor requirement."),
    ReportStage("bfk", "BFK", "bfk", "Brighter-fatter kernel", (),
                "Kernel per amp from the covariances of a flat-pair ramp; the PTC of flats corrected with it must "
                "be linear to 1 % (uncorrected beside it)."),
    ReportStage("electroBfDistortionMatrix", "ELECTROSTATIC_BF", "electroBfDistortionMatrix",
                "Electrostatic brighter-fatter", (),
                "Pixel-boundary shifts fitted to the a matrix of the FULLCOVARIANCE PTC (Astier & Regnault 2023); "
                "the PTC of flats corrected with it (ISR ASTIER23) must be linear to 1 % (uncorrected beside it)."),
    ReportStage("gain_correction", "GAIN_CORRECTION", "gain_correction", "Gain correction", (),
                "Per-amp factors on the PTC gains from a flat taken after a restart over the certified flat; every "
                "amp measured and within 5 % of 1."),
    ReportStage("flat_gradient_reference", "FLAT_GRADIENT", "flat_gradient_reference", "Flat gradient reference", (),
                "Focal-plane radial function and planar gradient of a band's flats; the model must describe the "
                "flats to 1 % and the gradient stay below 10 % across the field."),
    ReportStage("illuminationCorrection", "ILLUMINATION", "illuminationCorrection", "Illumination correction", (),
                "Super-star flat per detector and filter from dithered star photometry (ISR divides by it); "
                "re-measured after applying it, it must be flat (rms of c - 1 < 0.5 %)."),
    ReportStage("sky", "SKY", "sky", "Sky frame", (),
                "Static sky pattern per detector and filter (binned, relative to the sky level) from science "
                "exposures; its per-bin noise must be below 0.3 % of the sky with >= 90 % of bins measured."),
    ReportStage("fringe", "FRINGE", "fringe", "Fringe frame", (),
                "Red-band fringe pattern per detector and filter (relative to the sky; ISR doFringe subtracts it "
                "scaled); its signal-to-noise in 7 x 7 px boxes must be at least 3."),
    ReportStage("science", "SCIENCE", None, "Science", (("COL_PROFILE_RATIO", "column structure / noise"),
                                                       ("ROW_PROFILE_RATIO", "row structure / noise")),
                "Science exposures through all calibrations: amp level steps and residual structure."),
)

_KIND_OF_SUFFIX = {"Results": "results", "Summary": "summary", "Stats": "stats", "ExpStats": "expstats",
                   "IsrExp": "residual", "Preview": "residual"}


@dataclass
class Item:
    """A dataset found for the report."""

    stage: ReportStage
    kind: str
    """product, results, summary, stats, expstats or residual."""
    ref: DatasetRef
    path: Path
    link: str = ""
    """Report-relative link to its rendering, if any."""


@dataclass
class ReportResult:
    """What :func:`write_report` wrote."""

    output_dir: Path
    index: Path
    n_datasets: int
    n_images: int
    """PNG images referenced by the pages."""
    n_rendered: int
    """PNG images rendered now (the others were reused)."""
    verdicts: dict[str, bool | None] = field(default_factory=dict)
    """Calibration type -> SUCCESS of its Summary (None: no summary found)."""
    failures: dict[str, list[str]] = field(default_factory=dict)
    """Calibration type -> failing tests (``"<key> <failure>"`` strings from the Summary)."""
    missing: dict[str, str] = field(default_factory=dict)
    """Calibration type found without a verification summary -> the command that verifies it."""

    @property
    def overall(self) -> str:
        """``PASS`` only when every calibration type in the report was verified and passed;
        ``FAIL`` when one failed; ``INCOMPLETE`` when none failed but one was not verified
        (unverified is not passed, issue 16)."""
        return overall_verdict(self.verdicts)


@functools.lru_cache(maxsize=1)
def _templates():
    """The Jinja2 environment of the report pages (``cpframe/report/templates``), autoescaping HTML."""
    import jinja2

    return jinja2.Environment(loader=jinja2.PackageLoader("cpframe.report", "templates"),
                              autoescape=jinja2.select_autoescape(["html"]), undefined=jinja2.StrictUndefined,
                              keep_trailing_newline=True)


# -- collecting -----------------------------------------------------------------------------------


def _collect(repo: Any, collections: Sequence[str]) -> list[Item]:
    registry = repo.registry
    types = registry.query_dataset_types()
    registered = {dt.name for dt in types}
    items: list[Item] = []
    for st in REPORT_STAGES:
        wanted = {name: "product" for name in product_types(st, types)}  # single-LED: every flat_<LED>
        for suffix, kind in _KIND_OF_SUFFIX.items():
            name = st.verify_prefix + suffix
            if name in registered:
                wanted[name] = kind
        if not wanted:
            continue
        # run-level results and summaries have only an instrument in their data ID, so one
        # collection's would hide the others' (three flat bands = three verify collections):
        # they are found first *within* each collection; everything else find-first across all
        run_level = sorted(n for n, k in wanted.items() if k in ("results", "summary"))
        others = sorted(n for n in wanted if n not in run_level)
        seen: set[str] = set()
        refs = registry.query_datasets(others, collections, find_first=True) if others else []
        for c in collections if run_level else ():
            refs += registry.query_datasets(run_level, [c], find_first=True)
        for ref in refs:
            if ref.id not in seen:
                seen.add(ref.id)
                items.append(Item(st, wanted[ref.dataset_type], ref, repo.get_path(ref)))
    return split_anaglyph_flats(items)


# -- the writer -----------------------------------------------------------------------------------


class _Report:
    def __init__(self, repo: Any, collections: Sequence[str], out: Path, do_overwrite: bool):
        self.repo = repo
        self.collections = list(collections)
        self.out = out
        self.do_overwrite = do_overwrite
        self.n_rendered = 0
        self.images: set[str] = set()
        self._cameras: dict[tuple[str, tuple[int, int]], Camera] = {}

    # files ----------------------------------------------------------------------------------
    def png(self, rel: str, render: Callable[[Path], Any]) -> str:
        """Render ``rel`` (relative to the output dir) unless it exists and may be reused."""
        path = self.out / rel
        if rel not in self.images and (self.do_overwrite or not path.exists()):
            render(path)
            self.n_rendered += 1
        self.images.add(rel)
        return rel

    def page(self, name: str, title: str, template: str, depth: int = 0, **context: Any) -> Path:
        """Write a page from a template of ``cpframe/report/templates`` (each extends ``base.html``)."""
        up = "../" * depth
        text = _templates().get_template(template).render(title=title, up=up, stages=self._nav_stages(), **context)
        return atomic_write_text(self.out / name, text)

    def _nav_stages(self) -> list[dict]:
        return [{"key": st.key, "title": st.title, "per_exposure": get_stage(st.stage).kind == "exposure"}
                for st in getattr(self, "stages", [])]

    # cameras --------------------------------------------------------------------------------
    def camera_for(self, instrument: str, shape: tuple[int, int] | None) -> Camera:
        key = (instrument, tuple(shape or ()))
        if key not in self._cameras:
            cam = load_camera(instrument, "full")
            if shape is not None and tuple(cam.detectors[0].shape) != tuple(shape):
                mini = load_camera(instrument, "mini")
                if tuple(mini.detectors[0].shape) == tuple(shape):
                    cam = mini
            self._cameras[key] = cam
        return self._cameras[key]

    # the whole report -----------------------------------------------------------------------
    def write(self, items: list[Item]) -> ReportResult:
        self.items = items
        by_stage: dict[str, list[Item]] = {}
        for it in items:
            by_stage.setdefault(it.stage.key, []).append(it)
        self.stages = [st for st in REPORT_STAGES if st.key in by_stage]
        (self.out / "assets").mkdir(parents=True, exist_ok=True)
        for name in ("report.css", "report.js"):
            data = (resources.files("cpframe.report") / "assets" / name).read_bytes()
            target = self.out / "assets" / name
            if not target.exists() or target.read_bytes() != data:
                atomic_write_text(target, data.decode("utf-8"))
        sections, summary_rows = [], []
        result = ReportResult(self.out, self.out / "index.html", len(items), 0, 0)
        from cpframe.core.progress import progress

        with progress("report", total=len(self.stages)) as bar:
            sections_data = []
            for st in self.stages:
                sections_data.append((st, self.stage_section(st, by_stage[st.key])))
                bar.advance()
        for st, (sec, rows, verdict, failures) in sections_data:
            sections.append(sec)
            summary_rows += rows
            result.verdicts[st.key] = verdict
            result.failures[st.key] = failures
            if verdict is None:
                result.missing[st.key] = verify_command(st.key)
        self.write_index(sections, summary_rows, result)
        self.write_provenance()
        self.write_manifest()
        atomic_write_text(self.out / "navigation.html",
                          _templates().get_template("navigation.html").render(up="", stages=self._nav_stages()))
        result.n_images = len(self.images)
        result.n_rendered = self.n_rendered
        return result

    # one calibration type -------------------------------------------------------------------
    def stage_section(self, st: ReportStage, items: list[Item]):
        """The data of one calibration type's section of the index (rendered by ``stage.html``)."""
        kinds: dict[str, list[Item]] = {}
        for it in items:
            kinds.setdefault(it.kind, []).append(it)
        per_exposure = get_stage(st.stage).kind == "exposure"
        verdict, failures, summary_rows, links = None, [], [], []
        summary_data: dict = {"EXPOSURES": {}, "FAILURES": {}}
        for summary in kinds.get("summary", []):  # one per verify collection (e.g. per flat band)
            data = read_stats(summary.path)
            verdict = bool(data.get("SUCCESS")) and verdict is not False
            summary_data["EXPOSURES"].update(data.get("EXPOSURES") or {})
            summary_data["FAILURES"].update(data.get("FAILURES") or {})
            for key, fails in (data.get("FAILURES") or {}).items():
                failures += [f"{key} {f}" for f in fails]
                # each failure links to the page with its plot: the exposure's residual mosaic,
                # or the detector's product (PTC failures are keyed by detector name)
                link = (f"{st.key}_exp.html#exp{key}" if str(key).isdigit() and per_exposure
                        else f"{st.key}_det.html#{_anchor(str(key))}")
                links += [{"text": f"{key} {f}", "link": link} for f in fails]
            summary.link = f"index.html#{st.key}"
        tables = []
        for res in kinds.get("results", []):
            tables.append(read_results(res.path))
            res.link = self.results_page(st, res, tables[-1])
        table = None
        if tables:
            from astropy.table import vstack

            table = tables[0] if len(tables) == 1 else vstack(tables, join_type="outer", metadata_conflicts="silent")
            summary_rows += self.summary_rows(st, table, verdict)
        elif verdict is not None:
            summary_rows.append((st, "SUCCESS", "run", None, None, verdict, False))
        figures = []
        figures += self.product_mosaics(st, kinds.get("product", []))
        figures += self.residual_mosaics(st, kinds.get("residual", []), limit=1)
        if table is not None:
            figures += self.metric_plots(st, table)
        results = [{"infobox": self.infobox(res, "Results table: one row per amp (detector and exposure rows for "
                                                 "group tests)."),
                    "link": res.link, "title": res.ref.dataset_type} for res in kinds.get("results", [])]
        self.detector_page(st, kinds)
        if per_exposure:
            self.exposure_page(st, kinds, summary_data)
        section = {"key": st.key, "title": st.title, "description": st.description, "verdict": verdict,
                   "failures": links, "command": verify_command(st.key), "figures": figures, "results": results,
                   "per_exposure": per_exposure}
        return section, summary_rows, verdict, failures

    def infobox(self, it: Item, description: str) -> str:
        did = dict(it.ref.data_id)
        fields_ = [("instrument", did.get("instrument", "")), ("exposure", did.get("exposure", "")),
                   ("detector", did.get("detector", "")), ("filter", did.get("physical_filter", "")),
                   ("collection", it.ref.extra.get("collection", it.ref.run)), ("stage", it.stage.stage),
                   ("dataset type", it.ref.dataset_type)]
        return _templates().get_template("infobox.html").render(fields=[(k, v) for k, v in fields_ if v != ""],
                                                               description=description)

    def summary_rows(self, st: ReportStage, table, verdict) -> list[tuple]:
        rows = []
        informational = set(get_stage(st.stage).informational)
        pat = re.compile(rf"^{st.stage}_(DET_|EXP_)?VERIFY_(.+)$")
        for col in table.colnames:
            m = pat.match(col)
            if not m:
                continue
            level = {"DET_": "detector", "EXP_": "exposure", None: "amp"}[m.group(1)]
            values = table[col]
            mask = np.asarray(getattr(values, "mask", np.zeros(len(values), bool)), dtype=bool)
            vals = np.asarray(values, dtype=bool)[~mask]
            n_pass, n_fail = int(vals.sum()), int((~vals).sum())
            rows.append((st, m.group(2), level, n_pass, n_fail, n_fail == 0, m.group(2) in informational))
        return rows

    def results_page(self, st: ReportStage, res: Item, table) -> str:
        """The Results table as a page (``results.html``): failing rows first, column names without
        the stage prefix and breakable at ``_``, so a per-amp table fits the report's frame."""
        rel = f"src/{st.key}/{res.ref.dataset_type}_{res.ref.id[:8]}.html"
        cols = [c for c in table.colnames if len(table[c].shape) <= 1]
        prefix = f"{st.stage}_"
        units = COLUMN_UNITS.get(st.stage, {})
        columns = []
        for c in cols:
            short = c[len(prefix):] if c.startswith(prefix) else c
            columns.append({"full": c, "short": short, "unit": units.get(short, "") if c.startswith(prefix) else ""})
        rows = []
        for row in table:
            cells, fail = [], False
            for c in cols:
                v = row[c]
                masked = np.ma.is_masked(v)
                text = "" if masked else _fmt(v, c)
                cls = ""
                if not masked and isinstance(v, (bool, np.bool_)):
                    cls = "pass" if v else "fail"
                    fail = fail or (not v and "_VERIFY_" in c and c.rsplit("_VERIFY_", 1)[1] != "SUCCESS"
                                    and c.rsplit("_VERIFY_", 1)[1] not in get_stage(st.stage).informational)
                elif not masked and isinstance(v, (int, float, np.integer, np.floating)):
                    cls = "num"
                cells.append({"text": text, "cls": cls})
            rows.append({"cells": cells, "fail": fail})
        rows.sort(key=lambda r: not r["fail"])
        doc = _templates().get_template("results.html").render(
            title=res.ref.dataset_type, n_rows=len(rows), n_failing=sum(r["fail"] for r in rows), run=res.ref.run,
            prefix=prefix, columns=columns, rows=rows)
        atomic_write_text(self.out / rel, doc)
        return rel

    # images ---------------------------------------------------------------------------------
    def _read_image(self, path: Path, exclude_masked: bool = False) -> tuple[np.ndarray, Any]:
        from cpframe.science.imageio import masked_layout, read_header, read_rows

        layout = masked_layout(path)
        rows = layout.shape[0]
        image = np.asarray(read_rows(layout, "IMAGE", 0, rows), dtype=float)
        if exclude_masked:
            from cpframe.science.imageio import mask_value

            mask = read_rows(layout, "MASK", 0, rows)
            image = np.where((mask & mask_value(["BAD", "DETECTED", "NO_DATA"])) != 0, np.nan, image)
        return image, read_header(path)

    def product_image(self, it: Item) -> tuple[np.ndarray, Detector, Camera, Any] | None:
        """Image (or map) of a product, its detector and camera, header/metadata."""
        did = it.ref.data_id
        fmt = it.stage.product
        if fmt in ("bias", "dark", "flat", "illuminationCorrection", "fringe"):
            image, header = self._read_image(it.path)
            cam = self.camera_for(did["instrument"], image.shape)
            return image, cam.detector(did["detector"]), cam, header
        if fmt == "defects":
            from cpframe.science.imageio import boxes_to_mask, read_defects

            boxes, meta = read_defects(it.path)
            cam = self._camera_from_meta(did["instrument"])
            det = cam.detector(did["detector"])
            return boxes_to_mask(boxes, det.shape).astype(float), det, cam, meta
        return None

    def _camera_from_meta(self, instrument: str) -> Camera:
        for (inst, shape), cam in self._cameras.items():
            if inst == instrument and shape:
                return cam
        residual = [i for i in self.items if i.ref.data_id.get("instrument") == instrument
                    and i.kind in ("product", "residual") and str(i.path).endswith(".fits")
                    and i.stage.product in ("bias", "dark", "flat", "illuminationCorrection", "fringe", None)]
        if residual:
            from cpframe.science.imageio import masked_layout

            return self.camera_for(instrument, tuple(masked_layout(residual[0].path).shape))
        return self.camera_for(instrument, None)

    def product_mosaics(self, st: ReportStage, products: list[Item]) -> list[str]:
        if not products:
            return []
        if st.product == "ptc":
            return self.ptc_mosaics(st, products)
        if st.product in CALTYPE_PRODUCTS:  # linearizer, crosstalk, cti: cpframe/report/caltypes.py
            return caltype_figures(self, st, products)
        groups: dict[str, list[Item]] = {}
        for it in products:
            groups.setdefault(mosaic_group(st, it.ref), []).append(it)
        out = []
        from cpframe.verify.plots import render_image_png, render_mosaic_png

        for filt, group in sorted(groups.items()):
            images, cam, units = {}, None, ""
            for it in group:
                got = self.product_image(it)
                if got is None:
                    continue
                image, det, cam, header = got
                images[det.id] = image
                units = product_units(st.product, str(header.get("LSST ISR UNITS", "")) if hasattr(header, "get") else "")
                title = f"{it.ref.dataset_type} {det.name}" + (f" {filt}" if filt else "")
                it.link = self.png(f"src/{st.key}/{it.ref.dataset_type}_{det.name}{'_' + filt if filt else ''}"
                                   f"_{it.ref.id[:8]}.png",
                                   lambda p, im=image, t=title, u=units: render_image_png(im, p, t, u))
            if not images or cam is None:
                continue
            digest = hashlib.sha1(",".join(sorted(i.ref.id for i in group)).encode()).hexdigest()[:10]
            title = f"{st.product} focal plane" + (f" ({filt})" if filt else "") + f" - {len(images)} detector(s)"
            label = "defect (1) / good (0)" if st.product == "defects" else units
            rel = self.png(f"src/{st.key}/{st.product}_mosaic{'_' + filt if filt else ''}_{digest}.png",
                           lambda p, ims=images, c=cam, t=title, lab=label: render_mosaic_png(ims, c, p, t, lab))
            out.append(self.figure(rel, f"{st.product}{' ' + filt if filt else ''}: combined product per detector, "
                                        "laid out by raft and slot; stretch median ± 3×0.74×IQR.", cls="mosaic"))
        return out

    def ptc_mosaics(self, st: ReportStage, products: list[Item]) -> list[str]:
        from cpframe.science.imageio import read_ptc
        from cpframe.verify.plots import amp_value_image, render_mosaic_png, render_ptc_png

        gains, noises, cam = {}, {}, None
        for it in products:
            rows, _ = read_ptc(it.path)
            cam = self._camera_from_meta(it.ref.data_id["instrument"])
            det = cam.detector(it.ref.data_id["detector"])
            gains[det.id] = amp_value_image(det, {a: r["gain"] for a, r in rows.items()})
            noises[det.id] = amp_value_image(det, {a: r["noise"] for a, r in rows.items()})
            it.link = self.png(f"src/{st.key}/ptc_{det.name}_{it.ref.id[:8]}.png",
                               lambda p, r=rows, t=f"PTC {det.name}": render_ptc_png(r, p, t))
        if cam is None:
            return []
        digest = hashlib.sha1(",".join(sorted(i.ref.id for i in products)).encode()).hexdigest()[:10]
        out = []
        for name, images, label in (("gain", gains, "gain (e-/adu)"), ("noise", noises, "read noise (e-)")):
            rel = self.png(f"src/{st.key}/ptc_{name}_per_amp_{digest}.png",
                           lambda p, ims=images, t=f"PTC {name} per amp", lab=label: render_mosaic_png(ims, cam, p, t, lab))
            out.append(self.figure(rel, f"PTC {name} of every amp, laid out on the focal plane.", cls="mosaic"))
        return out

    def residual_mosaics(self, st: ReportStage, residuals: list[Item], limit: int | None = None) -> list[str]:
        from cpframe.verify.plots import render_mosaic_png

        from cpframe.verify.preview import preview_shape

        # a verification keeps a binned preview of each residual (verify<Type>Preview); the full-size
        # residual (verify<Type>IsrExp) only when its intermediates were kept: one image per exposure
        # and detector, the preview first
        chosen: dict[tuple[int, int], Item] = {}
        for it in sorted(residuals, key=lambda i: not i.ref.dataset_type.endswith("Preview")):
            chosen.setdefault((int(it.ref.data_id.get("exposure", 0)), int(it.ref.data_id["detector"])), it)
        by_exp: dict[int, list[Item]] = {}
        for (exp, _), it in sorted(chosen.items()):
            by_exp.setdefault(exp, []).append(it)
        out = []
        for exp in sorted(by_exp)[: limit or None]:
            group = by_exp[exp]
            digest = hashlib.sha1(",".join(sorted(i.ref.id for i in group)).encode()).hexdigest()[:10]
            rel = f"src/{st.key}/{st.verify_prefix}Residual_{exp}_{digest}.png"

            def render(p, group=group, exp=exp):
                images, cam = {}, None
                for it in group:
                    image, header = self._read_image(it.path, exclude_masked=True)
                    cam = self.camera_for(it.ref.data_id["instrument"], preview_shape(header) or image.shape)
                    images[cam.detector(it.ref.data_id["detector"]).id] = image
                render_mosaic_png(images, cam, p, f"{st.title} residual, exposure {exp}", "e-")

            self.png(rel, render)
            for it in group:
                it.link = rel
            out.append(self.figure(rel, f"Verification residual of exposure {exp} ({len(group)} detector(s)); "
                                        "masked pixels blank.", cls="mosaic"))
        return out

    def metric_plots(self, st: ReportStage, table) -> list[str]:
        from cpframe.verify.plots import render_metric_png

        out = []
        if st.stage == "PTC":
            amp = table[_amp_rows(table)]
            if "PTC_PTC_GAIN" in amp.colnames and len(amp):
                dets = sorted(set(amp["detector_name"]))
                nominal = _floats(amp["PTC_AMP_GAIN"])
                if np.isfinite(nominal).any():
                    name, ylabel, limits = "PTC gain / nominal", "ratio", (0.95, 1.05)
                    values = _floats(amp["PTC_PTC_GAIN"]) / nominal
                    caption = "Each amp's PTC gain over its nominal gain; dashed: the ±5 % test."
                else:
                    name, ylabel, limits = "PTC gain", "gain (e-/adu)", ()
                    values = _floats(amp["PTC_PTC_GAIN"])
                    caption = "Each amp's PTC gain (no nominal gains were given to verification)."
                series = {name: [[float(v) for v, d in zip(values, amp["detector_name"]) if d == det]
                                 for det in dets]}
                digest = hashlib.sha1(str(list(values)).encode()).hexdigest()[:10]
                rel = self.png(f"src/{st.key}/ptc_gain_{digest}.png",
                               lambda p: render_metric_png(dets, series, p, f"{name} per amp", ylabel, limits))
                out.append(self.figure(rel, caption))
            return out
        if "exposure" not in table.colnames:
            return out
        amp = table[_amp_rows(table)]
        if not len(amp):
            return out
        exposures = sorted(set(int(x) for x in amp["exposure"]))
        labels = [f"{x // 100000}-{x % 100000}" for x in exposures]
        dets = sorted(set(str(d) for d in amp["detector_name"]))
        for stat, label in st.metrics:
            col = f"{st.stage}_{stat}"
            if col not in amp.colnames:
                continue
            vals, det_of, exp_of = _floats(amp[col]), [str(d) for d in amp["detector_name"]], amp["exposure"]
            series = {d: [[float(v) for v, dd, xx in zip(vals, det_of, exp_of) if dd == d and int(xx) == x]
                          for x in exposures] for d in dets}
            digest = hashlib.sha1((col + str(list(amp[col]))).encode()).hexdigest()[:10]
            rel = self.png(f"src/{st.key}/{col}_vs_exposure_{digest}.png",
                           lambda p, s=series, c=col, lab=label: render_metric_png(
                               labels, s, p, f"{st.title} {c} per amp across exposures", lab))
            out.append(self.figure(rel, f"{col} of every amp (dots) and the detector median (line) per exposure "
                                        "(day_obs-seq_num), across nights."))
        return out

    def figure(self, rel: str, caption: str, anchor: str = "", cls: str = "") -> str:
        return _templates().get_template("figure.html").render(rel=rel, caption=caption, anchor=anchor, cls=cls)

    # pages ----------------------------------------------------------------------------------
    def write_index(self, sections: list[dict], rows: list[tuple], result: ReportResult) -> None:
        from cpframe.verify.config import TEST_NOTES

        tests = []
        for st, test, level, n_pass, n_fail, ok, info in rows:
            condition, why = TEST_NOTES.get((st.stage, test), ("", ""))
            tests.append({"key": st.key, "title": st.title, "test": test, "level": level, "n_pass": n_pass,
                          "n_fail": n_fail, "info": info, "cls": "pass" if ok or info else "fail",
                          "verdict": "pass" if ok else ("FAIL (informational)" if info else "FAIL"),
                          "condition": condition, "why": why})
        tests.sort(key=lambda r: r["cls"] != "fail")  # failing items first (stable otherwise)
        order = {False: 0, None: 1, True: 2}
        verdicts = [{"key": k, "cls": "fail" if v is False else "pass" if v else "none",
                     "word": "PASS" if v else "FAIL" if v is False else "NOT VERIFIED",
                     "n_fail": len(result.failures.get(k, []))}
                    for k, v in sorted(result.verdicts.items(), key=lambda kv: order[kv[1]])]
        sections = sorted(sections, key=lambda sec: order[sec["verdict"]])
        now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        overall = result.overall
        self.page("index.html", "cpframe calibration report", "index.html",
                  repo=str(self.repo.root), now=now, n_datasets=len(self.items), collections=self.collections,
                  overall=overall, overall_class={"PASS": "pass", "FAIL": "fail"}.get(overall, "none"),
                  missing=result.missing, verdicts=verdicts, tests=tests, sections=sections)

    def detector_page(self, st: ReportStage, kinds: dict[str, list[Item]]) -> None:
        products = sorted(kinds.get("product", []), key=lambda i: (i.ref.data_id.get("detector", 0),
                                                                   str(i.ref.data_id.get("physical_filter", ""))))
        stats = [i for i in kinds.get("stats", []) if "exposure" not in i.ref.data_id]
        by_det: dict[int, list[Item]] = {}
        for it in products + stats:
            by_det.setdefault(int(it.ref.data_id.get("detector", -1)), []).append(it)
        detectors = []
        for det_id in sorted(by_det):
            group = by_det[det_id]
            name = self._det_name(group[0])
            figs = [self.figure(i.link, f"{i.ref.dataset_type} {name} {i.ref.data_id.get('physical_filter', '')}")
                    for i in group if i.kind == "product" and i.link.endswith(".png")]
            entries = []
            for it in group:
                if it.kind == "product":
                    entries.append({"provenance": self.product_provenance(it)})
                elif it.kind == "stats":
                    s = read_stats(it.path)
                    entries.append({"provenance": None, "dataset_type": it.ref.dataset_type, "ok": s.get("SUCCESS"),
                                    "failures": ", ".join(s.get("FAILURES", []))})
            detectors.append({"id": det_id, "name": name, "anchor": _anchor(name), "figures": figs, "entries": entries})
        self.page(f"{st.key}_det.html", f"{st.title} per detector", "detectors.html", stage_title=st.title,
                  detectors=detectors)

    def _det_name(self, it: Item) -> str:
        try:
            return self._camera_from_meta(it.ref.data_id["instrument"]).detector(it.ref.data_id["detector"]).name
        except Exception:  # noqa: BLE001 - a name is cosmetic; fall back to the id
            return f"detector {it.ref.data_id.get('detector')}"

    def product_provenance(self, it: Item) -> dict:
        """What ``detectors.html`` shows of a product's provenance: its RUN and its inputs."""
        header: Mapping[str, Any] = {}
        if str(it.path).endswith(".fits"):
            from cpframe.science.imageio import read_header

            header = read_header(it.path)
        elif str(it.path).endswith(".ecsv"):
            from astropy.table import Table

            header = Table.read(it.path, format="ascii.ecsv").meta
        inputs = []
        i = 0
        while header_value(header, f"CPP_INPUT_{i}") is not None:
            inputs.append(tuple(header_value(header, f"CPP_INPUT{k}_{i}", "")
                                for k in ("", "_DATE", "_EXPT", "_SCALE")))
            i += 1
        calib_inputs = [str(x) for x in (header.get("inputs") or [])] if hasattr(header, "get") else []
        what = f"{len(inputs)} input exposure(s)"
        if not inputs and calib_inputs:  # made from other calibrations (defects: the bootstraps)
            what = f"{len(calib_inputs)} input calibration(s)"
        elif not inputs:
            what = "inputs: see the RUN's provenance"
        return {"dataset_type": it.ref.dataset_type, "filter": it.ref.data_id.get("physical_filter", ""),
                "run": it.ref.run, "run_anchor": _anchor(it.ref.run), "what": what, "id": it.ref.id,
                "created": header_value(header, "CALIB_CREATION_DATETIME", ""),
                "inputs": [(a, b, _fmt(c), _fmt(d)) for a, b, c, d in inputs], "calib_inputs": calib_inputs}

    def exposure_page(self, st: ReportStage, kinds: dict[str, list[Item]], summary: Mapping[str, Any]) -> None:
        residuals = kinds.get("residual", [])
        verdicts = summary.get("EXPOSURES", {}) if summary else {}
        failures = summary.get("FAILURES", {}) if summary else {}
        exposures = sorted({int(i.ref.data_id["exposure"]) for i in residuals if "exposure" in i.ref.data_id}
                           | {int(k) for k in verdicts if str(k).isdigit()})
        figures = {}
        for fig_html, exp in zip(self.residual_mosaics(st, residuals),
                                 sorted({int(i.ref.data_id.get("exposure", 0)) for i in residuals})):
            figures[exp] = fig_html
        rows = [{"id": exp, "ok": verdicts.get(str(exp)), "failures": failures.get(str(exp)) or [],
                 "figure": figures.get(exp, "")} for exp in exposures]
        self.page(f"{st.key}_exp.html", f"{st.title} per exposure", "exposures.html", stage_title=st.title,
                  exposures=rows)

    def write_provenance(self) -> None:
        runs = []
        for run in sorted({it.ref.run for it in self.items}):
            info = self.repo.registry.get_run_info(run)
            records = info.get("records") if isinstance(info, dict) else None
            records = (records if isinstance(records, list) else [info]) if info else []
            runs.append({"run": run, "anchor": _anchor(run), "n": sum(1 for it in self.items if it.ref.run == run),
                         "records": [_record_rows(rec) for rec in records]})
        self.page("provenance.html", "Provenance", "provenance.html", runs=runs)

    def write_manifest(self) -> None:
        types = {dt.name: dt for dt in self.repo.registry.query_dataset_types()}
        rows = []
        for it in sorted(self.items, key=lambda i: (i.stage.key, i.ref.dataset_type, str(i.ref.data_id))):
            dt = types.get(it.ref.dataset_type)
            rows.append({"stage": it.stage.title, "id": it.ref.id[:8], "dataset_type": it.ref.dataset_type,
                         "format": dt.storage_format if dt else "", "data_id": str(it.ref.data_id),
                         "collection": it.ref.extra.get("collection", it.ref.run), "link": it.link,
                         "file": it.path.as_uri()})
        self.page("manifest.html", "Manifest", "manifest.html", rows=rows)


def _amp_rows(table) -> np.ndarray:
    """Rows of amps (detector and exposure rows have an empty -- after ECSV, masked -- amplifier)."""
    return np.array([not np.ma.is_masked(a) and str(a) not in ("", "--") for a in table["amplifier"]], dtype=bool)


def _anchor(text: str) -> str:
    return "run-" + re.sub(r"[^A-Za-z0-9_-]+", "-", text)


_RECORD_KEYS = ("status", "command_line", "selection", "collections", "timings", "versions", "host", "submit_dir",
                "missing")


def _record_rows(rec: Mapping[str, Any]) -> list[tuple[str, str, bool]]:
    """(key, text, multi-line) rows of one provenance record, the usual keys first, long values cut at 4000 characters."""
    keys = [k for k in _RECORD_KEYS if k in rec] + sorted(k for k in rec if k not in _RECORD_KEYS
                                                         and k not in ("template", "submission", "outputs",
                                                                       "data_ids", "environment"))
    rows = []
    for k in keys:
        v = rec[k]
        text = " ".join(map(str, v)) if k == "command_line" and isinstance(v, list) else (
            json.dumps(v, indent=1, sort_keys=True, default=str) if isinstance(v, (dict, list)) else str(v))
        if len(text) > 4000:
            text = text[:4000] + " ..."
        rows.append((k, text, "\n" in text))
    for k in ("data_ids", "outputs"):
        if isinstance(rec.get(k), list):
            rows.append((k, f"{len(rec[k])} entries", False))
    return rows


def write_report(
    repo: Any, collections: Sequence[str], output_dir: str | Path, *, do_overwrite: bool = False,
) -> ReportResult:
    """Write the static HTML report (module docstring) and return what was written.

    Parameters
    ----------
    repo : cpframe.repository.repo.Repository
    collections : sequence of str
        Searched in order, find-first: verification collections first, then generation ones.
    output_dir : path
        Created if missing; pages are rewritten, PNGs reused unless ``do_overwrite``.

    Raises
    ------
    UserInputError
        No collections, or nothing to report in them.
    UnknownCollectionError
        A collection does not exist.
    """
    if not collections:
        raise UserInputError("no collections given; pass -c VERIFY_COLLECTION ... -c GEN_COLLECTION ...")
    out = Path(output_dir).absolute()
    if out.exists() and not out.is_dir():
        raise UserInputError(f"report directory {out} exists and is not a directory; choose another -o.")
    items = _collect(repo, collections)
    if not items:
        raise UserInputError(
            f"{NO_DATASETS_MESSAGE} in {', '.join(collections)}: the report looks for "
            f"{', '.join(s.product for s in REPORT_STAGES if s.product)} and verify<Type>Results/Summary datasets. "
            "Check the collection names (cpframe query-collections) and that verification ran."
        )
    out.mkdir(parents=True, exist_ok=True)
    if do_overwrite and (out / "src").is_dir():
        shutil.rmtree(out / "src")
    return _Report(repo, collections, out, do_overwrite).write(items)
