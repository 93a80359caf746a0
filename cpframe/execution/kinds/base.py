"""What a task kind is: :class:`TaskKind` (its options, dimensions, planning and run) and :class:`Option`.

Every concrete kind is a subclass with a ``name``; defining the subclass registers it
(:data:`REGISTRY`).  See :mod:`cpframe.execution.kinds` for how to add one.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar, Mapping

from cpframe.core.errors import ConfigError, PlanningError, UserInputError

if TYPE_CHECKING:
    from cpframe.execution.graph_tasks import QuantumSpec
    from cpframe.execution.pipeline import TaskSpec

__all__ = ["ClassMap", "Option", "TaskKind", "REGISTRY", "REQUIRED", "UNSET", "enum", "get_kind", "accepted", "output_path",
           "calib_path", "detector_of", "detector_of_header", "header_meta"]


class _Marker:
    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return self.name


#: Default of an option every pipeline task must set (``calibrationType``, ``stage``).
REQUIRED = _Marker("REQUIRED")
#: Default of an option left to the science code when not set (documented per option).
UNSET = _Marker("UNSET")


def enum(*values: str) -> tuple[str, tuple[str, ...]]:
    """An option type: one of ``values``."""
    return ("enum", tuple(values))


@dataclass(frozen=True)
class Option:
    """One configuration key of a kind, under its cp_pipe name.

    Types: ``bool``, ``int``, ``float``, ``str``, ``"planes"`` (list of mask planes),
    ``"plane"``, ``"floats"``, ``"mapping"``, or :func:`enum`.
    """

    type: Any
    """The value type (checked by :func:`cpframe.execution.pipeline.parse_pipeline`)."""
    field: str | None = None
    """Attribute of the kind's ``config_class`` the key sets; its default is the option's default."""
    default: Any = None
    """Default when there is no ``field`` (:data:`REQUIRED`, :data:`UNSET` or a value)."""
    doc: str = ""
    """One line for docs/kinds.md."""
    required: bool = False
    """Every pipeline task of the kind must set it (its default is then :data:`REQUIRED`)."""


@dataclass(frozen=True)
class ClassMap:
    """How one real LSST task class (cp_pipe, ip_isr, cp_verify) maps onto a cpframe task kind.

    Read by :mod:`cpframe.execution.lsst_pipeline` from every kind's :attr:`TaskKind.task_classes`.
    """

    kind: str
    """cpframe task kind (the :class:`TaskKind` ``name``)."""
    dimensions: tuple[str, ...]
    """Quantum dimensions cpframe runs it on."""
    inputs: tuple[tuple[str, str], ...]
    """(connection, default dataset type) read, in cpframe's input order."""
    output: tuple[str, str]
    """(connection, default dataset type) written."""
    fields: Mapping[str, str] = field(default_factory=dict)
    """LSST config field -> cpframe config key."""
    ignored: tuple[str, ...] = ()
    """Fields accepted but not implemented by cpframe (``prefix.*`` matches a sub-config)."""
    defaults: Mapping[str, Any] = field(default_factory=dict)
    """Class defaults of mapped fields, where cpframe's own default differs."""
    fixed: Mapping[str, Any] = field(default_factory=dict)
    """cpframe config set by the class itself (verify ``stage``)."""
    extra_connections: tuple[str, ...] = ()
    """Connections accepted and not read by cpframe (calibration inputs it derives, QA outputs)."""
    optional_inputs: tuple[str, ...] = ()
    """Input connections read only when the file sets them."""
    calibrations: tuple[tuple[str, str], ...] = ()
    """(connection, default dataset type) of certified calibrations the task reads (prerequisite inputs)."""
    extra_outputs: tuple[tuple[str, str], ...] = ()
    """(connection, default dataset type) also written (json; the sky frame's per-step backgrounds)."""


#: Kind name -> kind class, filled by :meth:`TaskKind.__init_subclass__`.
REGISTRY: dict[str, type["TaskKind"]] = {}


class TaskKind:
    """One kind of pipeline task.  Subclass it (class attributes, classmethods only).

    Class attributes
    ----------------
    name : str
        The ``kind:`` of pipeline files.
    summary : str
        One line for docs/kinds.md.
    dimensions : tuple of frozenset
        Allowed quantum dimension sets (without ``instrument``).
    config_class : type or None
        The science configuration dataclass the options fill; the default of every option
        with a ``field`` is that field's default, so a direct Python call of the science
        function and a pipeline run start from the same values.
    options : dict
        cp_pipe name -> :class:`Option`.
    reads_raw : bool
        Quanta read one raw file (ISR).
    pairs_exposures : bool
        Quanta are exposure pairs (PTC extract).
    registers_all_outputs : bool
        Every output is registered, not only the pipeline's products (verification stats).
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    dimensions: ClassVar[tuple[frozenset, ...]] = ()
    config_class: ClassVar[type | None] = None
    options: ClassVar[Mapping[str, Option]] = MappingProxyType({})
    reads_raw: ClassVar[bool] = False
    pairs_exposures: ClassVar[bool] = False
    registers_all_outputs: ClassVar[bool] = False
    task_classes: ClassVar[Mapping[str, "ClassMap"]] = MappingProxyType({})
    """Real LSST task classes (full names, e.g. ``lsst.cp.pipe.CpDarkTask``) this kind runs, and how:
    connections, config fields mapped and accepted (:class:`ClassMap`).  The LSST pipeline reader
    (:mod:`cpframe.execution.lsst_pipeline`) knows a class only from here."""
    folded_classes: ClassVar[Mapping[str, str]] = MappingProxyType({})
    """LSST classes folded into this kind's task (role ``measure`` / ``merge`` / ``adjust``): several
    cp_pipe tasks that cpframe runs as one (defect measure + merge, PTC solve + gain-ratio adjust)."""
    settings_key: ClassVar[str] = "config"
    """Key of :meth:`plan`'s result (and of :meth:`for_quantum`'s) holding the science configuration."""

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if cls.name:
            if cls.name in REGISTRY and REGISTRY[cls.name] is not cls:
                raise TypeError(f"task kind {cls.name!r} is defined twice ({REGISTRY[cls.name]} and {cls})")
            REGISTRY[cls.name] = cls
            wrong = [c for c, m in cls.task_classes.items() if m.kind != cls.name]
            if wrong:
                raise TypeError(f"task kind {cls.name!r}: task_classes {wrong} map onto another kind")

    # -- configuration --------------------------------------------------------------------
    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """cp_pipe name -> default (:data:`REQUIRED` / :data:`UNSET` where there is none)."""
        out: dict[str, Any] = {}
        fields = {f.name: f for f in dataclasses.fields(cls.config_class)} if cls.config_class else {}
        for key, opt in cls.options.items():
            if opt.required:
                out[key] = REQUIRED
                continue
            if opt.field is None:
                out[key] = opt.default
                continue
            f = fields[opt.field]
            out[key] = f.default_factory() if f.default is dataclasses.MISSING else f.default
        return out

    @classmethod
    def direct_config(cls) -> Any:
        """The configuration a direct Python call of the science function uses by default."""
        return cls.config_class() if cls.config_class else dict(cls.filled({}))

    @classmethod
    def required_example(cls) -> dict[str, Any]:
        """Values for the :data:`REQUIRED` options (docs and tests)."""
        return {}

    @classmethod
    def filled(cls, config: Mapping[str, Any]) -> dict[str, Any]:
        """``config`` with every other option at its default (:data:`UNSET` ones left out)."""
        out = dict(config)
        for key, value in cls.defaults().items():
            if key not in out and value is not UNSET and value is not REQUIRED:
                out[key] = value
        return out

    @classmethod
    def calibrations(cls, config: Mapping[str, Any]) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
        """Calibrations read, when they follow from the config (ISR); None = the pipeline lists them."""
        return None

    @classmethod
    def exposure_filter(cls, task: "TaskSpec") -> tuple[str, str] | None:
        """(exposure record field, value) an input of one exposure must have to be read, or None (all are).

        cp_pipe's ``adjustQuantum`` down-selection (``CpFlatNormalizationTask.doDownSelection``); the
        planner (:func:`cpframe.execution.graph.make_plan`) applies it, case-insensitively.
        """
        return None

    # -- planning (driver side) -----------------------------------------------------------------
    @classmethod
    def plan(cls, task: "TaskSpec", settings: Any, explicit: set[str]) -> tuple[dict[str, Any], list[str]]:
        """Science-side settings shared by every quantum of ``task`` (picklable), and notes.

        By default: the options ``config_class.from_dict`` accepts (see :func:`accepted`), as one
        ``config_class`` instance under :attr:`settings_key`.  Kinds with more settings override it.
        """
        if cls.config_class is None:  # pragma: no cover - every kind without a config class overrides plan
            raise NotImplementedError(f"task kind {cls.name!r} needs a plan()")
        parse = cls.config_class.from_dict
        keep, notes = accepted(task.label, dict(task.config), parse, explicit)
        return {cls.settings_key: parse(keep)}, notes

    @classmethod
    def for_quantum(cls, shared: Mapping[str, Any], found: Mapping[str, Any]) -> dict[str, Any]:
        """Settings of one quantum given the calibrations found for it (default: shared)."""
        return dict(shared)

    # -- running (worker side) -------------------------------------------------------------------
    @classmethod
    def run(cls, spec: "QuantumSpec", groups: Mapping[str, list[Any]]) -> Any:
        """Run one quantum; returns the value passed to the quanta that read it."""
        raise NotImplementedError  # pragma: no cover


def accepted(label: str, config: Mapping[str, Any], parse, explicit: set[str]) -> tuple[dict, list[str]]:
    """Keep the options the science code's ``parse`` accepts; say which ones it cannot honour.

    A switch set true that the science code accepts only when false (a step cpframe does
    not implement) is turned off; an option it does not know is dropped.  Notes name those
    the pipeline file sets explicitly (defaults without a cpframe equivalent go unmentioned).
    """
    keep, off, dropped = {}, [], []
    for k, v in config.items():
        try:
            parse({k: v})
            keep[k] = v
            continue
        except (ConfigError, UserInputError, TypeError, ValueError):
            pass
        if v is True:
            try:
                parse({k: False})
                off.append(k)
                continue
            except (ConfigError, UserInputError, TypeError, ValueError):
                pass
        dropped.append(k)
    notes = []
    off, dropped = [k for k in off if k in explicit], [k for k in dropped if k in explicit]
    if off:
        notes.append(f"{label}: {', '.join(off)} not implemented by cpframe; run with them off")
    if dropped:
        # the value is shown: a known key with a value cpframe does not implement (scalingLevel=AMP)
        # is dropped too, and runs with the science code's default instead
        shown = ", ".join(f"{k}={config[k]!r}" for k in dropped)
        notes.append(f"{label}: option(s) without a cpframe equivalent or value, ignored (default used): {shown}")
    return keep, notes


def get_kind(name: str) -> type[TaskKind]:
    """The kind called ``name``.

    Raises
    ------
    PlanningError
        No such kind.
    """
    try:
        return REGISTRY[name]
    except KeyError:
        raise PlanningError(f"task kind {name!r} is not known to this cpframe; known: {', '.join(REGISTRY)}.") from None


# -- helpers for run() ------------------------------------------------------------------------------
def output_path(spec: "QuantumSpec", index: int = 0) -> str:
    """The scratch path of output ``index`` (its folder is made)."""
    from pathlib import Path

    p = spec.outputs[index][0]
    # not parents=True: once the driver removed the scratch folder (run cancelled, SIGTERM), a task
    # still running must fail instead of re-creating it, so scratch never leaks (issue 11)
    Path(p).parent.mkdir(exist_ok=True)
    return p


def header_meta(path: str) -> dict:
    """Instrument, detector and scale cards of a file's header (carried into a product's metadata)."""
    from cpframe.science.imageio import read_header

    h = read_header(path)
    return {k: h[k] for k in ("INSTRUME", "DETECTOR", "DETNAME", "CAMSCALE") if k in h}


def calib_path(spec: "QuantumSpec", name: str) -> str | None:
    """The (first) file of calibration ``name`` found for the quantum, or None."""
    paths = spec.calib_paths.get(name) or []
    return paths[0] if paths else None


def detector_of(path: str, detector_id: int):
    """The camera-model detector of a file (its header's instrument and scale)."""
    from cpframe.science.imageio import read_header

    if str(path).endswith(".json"):  # a cpframe JSON product: instrument and scale in its meta
        import json
        from pathlib import Path

        h = json.loads(Path(path).read_text()).get("meta") or {}
    else:
        h = read_header(path)
    return detector_of_header(h, detector_id)


def detector_of_header(h, detector_id: int):
    """The camera-model detector named by header cards (instrument and scale)."""
    from cpframe.camera.models import load_camera

    return load_camera(str(h["INSTRUME"]), str(h.get("CAMSCALE", "full")).lower()).detector(int(detector_id))
