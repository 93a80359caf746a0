"""A rendered submission (plain dict) -> validated, frozen :class:`Submission`.

No I/O: this module only checks values.  Every problem is collected and one
:class:`~cpframe.core.errors.SubmissionError` lists them all.  Keys follow spec
templates.md §1.1; a key is looked for in ``payload`` first, then at the root
(command-line values were already applied by :mod:`cpframe.execution.templates`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from cpframe.core.config import parse_bytes
from cpframe.core.errors import ConfigError, SubmissionError
from cpframe.repository.names import collection_name_problem

__all__ = [
    "ClusterSpec",
    "Submission",
    "TaskResources",
    "Limits",
    "Resources",
    "COMPUTE_SITES",
    "IGNORED_KEYS",
    "QUANTUM_DIMENSIONS",
    "REQUIRED_KEYS",
    "check_against_pipeline",
    "validate_submission",
]

#: Keys every submission needs (``pipelineYaml`` at the root, the others under ``payload``).
REQUIRED_KEYS = ("pipelineYaml", "payload.payloadName", "payload.butlerConfig", "payload.inCollection",
                 "payload.dataQuery")
#: Accepted ``computeSite`` values.
COMPUTE_SITES = ("local", "slurm")
#: BPS keys that have no meaning for a Dask backend: accepted, listed once as "ignored by cpframe"
#: in the plan output (docs/submit.md "BPS keys cpframe ignores"), never an error.
IGNORED_KEYS = {
    "wmsServiceClass": "cpframe runs on Dask, not on a BPS workflow system",
    "runQuantumCommand": "quanta are Python calls on Dask workers, not pipetask commands",
    "extraRunQuantumOptions": "no pipetask command line per quantum",
    "clusterAlgorithm": "grouping follows the cluster sections themselves",
    "ordering": "Dask orders tasks by their dependencies",
    "bpsUseShared": "no shared submit-side files", "executionButler": "registration is done by the driver",
    "finalJob": "outputs are registered as each quantum finishes; the output chain is set at submit",
    "whenSaveJobQgraph": "no per-job graph files", "qgraphFileTemplate": "no graph files",
    "subDirTemplate": "no per-job directories", "templateDataId": "no per-job names",
    "createQuantumGraph": "the plan is built in-process", "runInit": "no init job",
    "useLazyCommands": "no job commands", "preemptible": "Slurm preemption is a site setting",
    "profile": "no per-job profiling", "memoryLimit": "use requestMemoryMax",
    "computeCloud": "no cloud back end", "wmsJobId": "no WMS job ids",
    "partitionDimensions": "Dask schedules each quantum on its own: nothing to partition",
}
#: Dimensions a cluster (or a task's quanta) may be grouped by.
QUANTUM_DIMENSIONS = ("instrument", "exposure", "detector", "physical_filter", "band", "day_obs", "visit")

MSG_INVALID = "{source}: the submission has {n} problem{s}:\n{items}\nFix the template (or pass --var) and retry."
DEFAULT_REQUEST_MEMORY_MIB = 2048
DEFAULT_REQUEST_CPUS = 1
_UNRESOLVED = re.compile(r"\$\{?[A-Za-z_]\w*\}?|\{[A-Za-z_]\w*(:[^{}]*)?\}")


@dataclass(frozen=True)
class ClusterSpec:
    """One ``cluster.<label>`` section: task labels run together, one job per dimension value."""

    label: str
    """The cluster's name (``cpBiasIsrByExposure``)."""
    pipetasks: tuple[str, ...]
    """Task labels grouped in the cluster, in the order given."""
    dimensions: tuple[str, ...]
    """One job per distinct value of these dimensions (``exposure``)."""
    equal_dimensions: tuple[tuple[str, str], ...] = ()
    """``dimA:dimB`` pairs treated as equal."""
    request_memory_mib: int | None = None
    """Memory per job, MiB (None: the larger of the member tasks', else the global)."""
    request_cpus: int | None = None
    """Cores per job (None: as for memory)."""
    limits: "Limits" = field(default_factory=lambda: Limits())
    """requestWalltime, memoryMultiplier, requestMemoryMax, numberOfRetries, retryUnlessExit of the section."""


@dataclass(frozen=True)
class TaskResources:
    """``pipetask.<label>`` overrides."""

    label: str
    """Task label."""
    request_memory_mib: int | None = None
    """Memory per quantum, MiB."""
    request_cpus: int | None = None
    """Cores per quantum."""
    limits: "Limits" = field(default_factory=lambda: Limits())
    """requestWalltime, memoryMultiplier, requestMemoryMax, numberOfRetries, retryUnlessExit of the section."""


@dataclass(frozen=True)
class Limits:
    """The BPS keys that bound a job besides memory and cores (None: not set in this section)."""

    walltime_s: int | None = None
    """``requestWalltime``: seconds (a number) or duration text ("2h", "01:30:00")."""
    memory_multiplier: float | None = None
    """``memoryMultiplier``: memory growth per retry after running out of memory (> 1)."""
    memory_max_mib: int | None = None
    """``requestMemoryMax``: cap of that growth, MiB."""
    retries: int | None = None
    """``numberOfRetries``."""
    retry_unless_exit: tuple[int, ...] | None = None
    """``retryUnlessExit``: exit codes never retried."""


@dataclass(frozen=True)
class Resources:
    """What one task's quanta request (pipetask.<label> > its cluster.<label> > root; None: not requested)."""

    memory_mib: int | None = None
    """Memory per quantum, MiB (a Dask worker resource ``MEMORY`` in bytes)."""
    cpus: int | None = None
    """Cores per quantum (Dask worker resource ``CPU``)."""
    walltime_s: int | None = None
    """Longest a quantum may run, seconds."""
    retries: int | None = None
    """Retries of a failed quantum."""
    memory_multiplier: float | None = None
    """Memory growth per retry after running out of memory (BPS ``memoryMultiplier``)."""
    memory_max_mib: int | None = None
    """Cap of that growth, MiB."""
    retry_unless_exit: tuple[int, ...] = ()
    """Exit codes never retried."""

    def memory_for_attempt(self, attempt: int) -> int | None:
        """MiB for retry ``attempt`` (0 = first run): m0 * multiplier**attempt, capped (BPS's rule).

        >>> Resources(memory_mib=2048, memory_multiplier=2.0, memory_max_mib=6000).memory_for_attempt(2)
        6000
        >>> Resources(memory_mib=2048).memory_for_attempt(3)
        2048
        """
        if self.memory_mib is None:
            return None
        if not self.memory_multiplier or self.memory_multiplier <= 1:
            return self.memory_mib
        m = int(self.memory_mib * self.memory_multiplier ** attempt)
        return min(m, self.memory_max_mib) if self.memory_max_mib else m


@dataclass(frozen=True)
class Submission:
    """A validated submission: what to run, on which data, into which collections."""

    pipeline_yaml: str
    """Path of the pipeline definition (``pipelines/cpBias.yaml``)."""
    payload_name: str
    """``payload.payloadName``."""
    butler_config: str
    """Repository root or config (``-b``)."""
    in_collections: tuple[str, ...]
    """Input collections, searched in order; empty items (an empty variable) dropped."""
    data_query: str
    """Selection of the exposures (a ``where`` expression)."""
    output: str
    """The CHAINED output collection."""
    output_run: str
    """The RUN collection the datasets are written into."""
    compute_site: str | None = None
    """``local`` or ``slurm``; None: the settings decide."""
    site_file: str | None = None
    """Slurm site file (``site.<computeSite>.siteFile`` or ``siteFile``); None: the settings decide."""
    request_memory_mib: int = DEFAULT_REQUEST_MEMORY_MIB
    """Memory per job, MiB (``requestMemory``)."""
    request_cpus: int = DEFAULT_REQUEST_CPUS
    """Cores per job (``requestCpus``)."""
    number_of_retries: int | None = None
    """Retries of a failed task (``numberOfRetries``); None: the settings decide."""
    clusters: tuple[ClusterSpec, ...] = ()
    """``cluster.<label>`` sections."""
    pipetasks: tuple[TaskResources, ...] = ()
    """``pipetask.<label>`` resource overrides."""
    project: str = ""
    """Free label (``project``)."""
    campaign: str = ""
    """Free label (``campaign``)."""
    operator: str = ""
    """Who submitted."""
    timestamp: str = ""
    """UTC ``YYYYMMDDTHHMMSSZ`` of the rendering."""
    submit_path: str = ""
    """Directory for submit-side files (``submitPath``)."""
    uniq_proc_name: str = ""
    """File-name stem (``outputRun`` with ``/`` -> ``_``)."""
    extra_qgraph_options: str = ""
    """``extraQgraphOptions`` text (``--config label:field=value`` pairs are honoured by the planner)."""
    environment: tuple[tuple[str, str], ...] = ()
    """``environment`` section: variables set for every job (``${X}``/``<ENV:X>`` expanded on the worker)."""
    config_overrides: tuple[tuple[str, str, Any], ...] = ()
    """``--config label:field=value`` items of ``extraQgraphOptions`` (applied when the pipeline is read)."""
    ignored_options: tuple[str, ...] = ()
    """``extraQgraphOptions`` options cpframe does not use (listed in the plan output)."""
    ignored_keys: tuple[str, ...] = ()
    """Template keys present that have no meaning for Dask (:data:`IGNORED_KEYS`)."""
    config: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)
    """The whole rendered dict (for provenance)."""
    request_memory_explicit: bool = False
    """The template sets ``requestMemory`` at the root (else the BPS default is not applied to Dask tasks)."""
    limits: Limits = field(default_factory=Limits)
    """Root requestWalltime, memoryMultiplier, requestMemoryMax, retryUnlessExit (numberOfRetries above)."""

    def resources_for(self, task_label: str) -> Resources:
        """What ``task_label``'s quanta request: ``pipetask.<label>`` > its ``cluster.<label>`` > root.

        The root ``requestMemory``/``requestCpus`` count only when the template sets them: BPS's
        defaults (2048 MiB, 1 core) describe HTCondor jobs, not Dask tasks.
        """
        secs = [r for r in self.pipetasks if r.label == task_label]
        c = self.cluster_for(task_label)
        chain = [*secs, *([c] if c else [])]

        def pick(attr, root):
            for sec in chain:
                v = getattr(sec, attr)
                if v is not None:
                    return v
            return root

        def lim(attr, root):
            for sec in chain:
                v = getattr(sec.limits, attr) if sec.limits is not None else None
                if v is not None:
                    return v
            return root

        root_mem = self.request_memory_mib if self.request_memory_explicit else None
        root_cpus = self.request_cpus if "requestCpus" in self.config else None
        return Resources(
            memory_mib=pick("request_memory_mib", root_mem), cpus=pick("request_cpus", root_cpus),
            walltime_s=lim("walltime_s", self.limits.walltime_s), retries=lim("retries", self.number_of_retries),
            memory_multiplier=lim("memory_multiplier", self.limits.memory_multiplier),
            memory_max_mib=lim("memory_max_mib", self.limits.memory_max_mib),
            retry_unless_exit=tuple(lim("retry_unless_exit", self.limits.retry_unless_exit) or ()))

    def cluster_for(self, task_label: str) -> ClusterSpec | None:
        """The cluster that contains ``task_label``, if any."""
        for c in self.clusters:
            if task_label in c.pipetasks:
                return c
        return None


def _get(config: Mapping[str, Any], key: str) -> Any:
    payload = config.get("payload")
    if isinstance(payload, Mapping) and key in payload:
        return payload[key]
    return config.get(key)


def _split(value: Any) -> list[str] | None:
    """Comma-separated text or a list of text -> stripped items; None if neither."""
    if isinstance(value, str):
        return [v.strip() for v in value.split(",")]
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return [v.strip() for v in value]
    return None


def _int(value: Any, key: str, problems: list[str], minimum: int) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, str)
                                                                 and value.strip().isdigit())):
        problems.append(f"{key} must be a whole number >= {minimum}, got {value!r}")
        return None
    n = int(value)
    if n < minimum:
        problems.append(f"{key} must be >= {minimum}, got {n}")
        return None
    return n


def _memory_mib(value: Any, key: str, problems: list[str]) -> int | None:
    """MiB as an int (BPS) or text with a unit ("4 GiB")."""
    if value is None:
        return None
    if isinstance(value, str) and not value.strip().isdigit():
        try:
            n = -(-parse_bytes(value, key) // 2**20)
        except ConfigError:
            problems.append(f"{key} must be MiB (e.g. 2048) or text with a unit (e.g. '4 GiB'), got {value!r}")
            return None
        if n < 1:
            problems.append(f"{key} must be at least 1 MiB, got {value!r}")
            return None
        return n
    return _int(value, f"{key} (MiB)", problems, 1)


def _text(config: Mapping[str, Any], key: str, label: str, problems: list[str], required: bool) -> str:
    value = _get(config, key)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            problems.append(f"{label} is missing or empty (required)")
        return ""
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        problems.append(f"{label} must be text, got {type(value).__name__} {value!r}")
        return ""
    value = str(value).strip()
    if required and _UNRESOLVED.search(value):
        problems.append(f"{label} still holds an unresolved placeholder: {value!r}")
    return value


def _collection(name: str, label: str, problems: list[str]) -> None:
    problem = collection_name_problem(name)
    if problem:
        problems.append(f"{label} {name!r} is not a valid collection name: it {problem}")


def _resources(sec: Mapping[str, Any], where: str, problems: list[str]) -> tuple[int | None, int | None]:
    return (_memory_mib(sec.get("requestMemory"), f"{where}.requestMemory", problems),
            _int(sec.get("requestCpus"), f"{where}.requestCpus", problems, 1))


def _limits(sec: Mapping[str, Any], where: str, problems: list[str]) -> Limits:
    """requestWalltime, memoryMultiplier, requestMemoryMax, numberOfRetries, retryUnlessExit of one section."""
    from cpframe.execution.cluster import parse_duration

    pre = f"{where}." if where else ""
    wt = sec.get("requestWalltime")
    walltime = None
    if wt is not None:
        if isinstance(wt, (int, float)) and not isinstance(wt, bool) and wt > 0:
            walltime = int(wt)
        else:
            try:
                walltime = int(parse_duration(wt, f"{pre}requestWalltime"))
            except ConfigError:
                problems.append(f"{pre}requestWalltime must be seconds or a duration such as '2h' or '01:30:00', "
                                f"got {wt!r}")
    mult = sec.get("memoryMultiplier")
    if mult is not None and (isinstance(mult, bool) or not isinstance(mult, (int, float)) or mult < 1):
        problems.append(f"{pre}memoryMultiplier must be a number >= 1, got {mult!r}")
        mult = None
    mmax = _memory_mib(sec.get("requestMemoryMax"), f"{pre}requestMemoryMax", problems)
    retries = _int(sec.get("numberOfRetries"), f"{pre}numberOfRetries", problems, 0)
    rue = sec.get("retryUnlessExit")
    codes = None
    if rue is not None:
        items = rue if isinstance(rue, list) else [rue]
        if not all(isinstance(c, int) and not isinstance(c, bool) for c in items):
            problems.append(f"{pre}retryUnlessExit must be an exit code or a list of them, got {rue!r}")
        else:
            codes = tuple(items)
    return Limits(walltime, float(mult) if mult is not None else None, mmax, retries, codes)


def _clusters(value: Any, problems: list[str]) -> tuple[ClusterSpec, ...]:
    if value in (None, {}):
        return ()
    if not isinstance(value, Mapping):
        problems.append(f"cluster must be a mapping of label -> {{pipetasks, dimensions}}, got {value!r}")
        return ()
    out, seen_tasks = [], {}
    for label, sec in value.items():
        where = f"cluster.{label}"
        if not isinstance(sec, Mapping):
            problems.append(f"{where} must be a mapping with pipetasks and dimensions, got {sec!r}")
            continue
        tasks = _split(sec.get("pipetasks"))
        if not tasks or not all(tasks):
            problems.append(f"{where}.pipetasks must list task labels (e.g. 'cpBiasIsr'), "
                            f"got {sec.get('pipetasks')!r}")
            tasks = []
        for t in tasks:
            if t in seen_tasks:
                problems.append(f"task {t!r} is in two clusters: {seen_tasks[t]} and {label}")
            seen_tasks[t] = label
        dims = _split(sec.get("dimensions"))
        if dims is None or not all(dims):
            problems.append(f"{where}.dimensions must name dimensions (e.g. 'exposure' or "
                            f"'detector,physical_filter'), got {sec.get('dimensions')!r}")
            dims = []
        bad = [d for d in dims if d not in QUANTUM_DIMENSIONS]
        if bad:
            problems.append(f"{where}.dimensions has unknown {', '.join(map(repr, bad))}; "
                            f"use {', '.join(QUANTUM_DIMENSIONS)}")
        pairs = []
        for item in _split(sec.get("equalDimensions")) or []:
            a, sep, b = item.partition(":")
            if not sep or not a or not b:
                problems.append(f"{where}.equalDimensions item {item!r} must be 'dimA:dimB'")
            else:
                pairs.append((a, b))
        # partitionDimensions/partitionMaxClusters/partitionMaxSize are accepted and ignored:
        # Dask schedules each quantum on its own, so there is nothing to partition.
        mem, cpus = _resources(sec, where, problems)
        out.append(ClusterSpec(str(label), tuple(tasks), tuple(dims), tuple(pairs), mem, cpus,
                               _limits(sec, where, problems)))
    return tuple(out)


def _pipetasks(value: Any, problems: list[str]) -> tuple[TaskResources, ...]:
    if value in (None, {}):
        return ()
    if not isinstance(value, Mapping):
        problems.append(f"pipetask must be a mapping of task label -> settings, got {value!r}")
        return ()
    out = []
    for label, sec in value.items():
        if not isinstance(sec, Mapping):
            problems.append(f"pipetask.{label} must be a mapping (requestMemory, requestCpus), got {sec!r}")
            continue
        mem, cpus = _resources(sec, f"pipetask.{label}", problems)
        out.append(TaskResources(str(label), mem, cpus, _limits(sec, f"pipetask.{label}", problems)))
    return tuple(out)


def validate_submission(config: Mapping[str, Any], source: str = "submission") -> Submission:
    """Check a rendered submission and build a :class:`Submission`.

    Parameters
    ----------
    config : mapping
        The plain dict from :func:`cpframe.execution.templates.render_template`.
    source : str
        Named in the message (usually the template path).

    Returns
    -------
    Submission

    Raises
    ------
    SubmissionError
        Lists every problem at once: missing required keys, wrong types
        (``requestMemory`` MiB, ``requestCpus``, ``numberOfRetries``, cluster
        sections), an unknown ``computeSite``, invalid collection names.
    """
    problems: list[str] = []
    if not isinstance(config, Mapping):
        raise SubmissionError(f"{source}: a submission must be a mapping of keys, got {type(config).__name__}.")
    payload = config.get("payload")
    if not isinstance(payload, Mapping):
        problems.append(f"payload must be a mapping (payloadName, butlerConfig, inCollection, dataQuery, "
                        f"...), got {payload!r}")
    pipeline_yaml = _text(config, "pipelineYaml", "pipelineYaml", problems, True)
    if "qgraphFile" in config:
        problems.append("qgraphFile (a pre-built graph) is not supported; give pipelineYaml")
    payload_name = _text(config, "payloadName", "payload.payloadName", problems, True)
    butler = _text(config, "butlerConfig", "payload.butlerConfig", problems, True)
    query = _text(config, "dataQuery", "payload.dataQuery", problems, True)
    output = _text(config, "output", "payload.output", problems, True)
    output_run = _text(config, "outputRun", "payload.outputRun", problems, True)

    raw_in = _get(config, "inCollection")
    inputs = _split(raw_in)
    if raw_in is None or (isinstance(raw_in, str) and not raw_in.strip()):
        problems.append("payload.inCollection is missing or empty (required)")
        inputs = []
    elif inputs is None:
        problems.append(f"payload.inCollection must be comma-separated text or a list, got {raw_in!r}")
        inputs = []
    inputs = [c for c in inputs if c]  # an empty ${CALIB_COLLECTIONS} leaves a trailing comma
    for c in inputs:
        _collection(c, "payload.inCollection item", problems)
    if len(set(inputs)) != len(inputs):
        dup = sorted({c for c in inputs if inputs.count(c) > 1})
        problems.append(f"payload.inCollection lists {', '.join(dup)} more than once")
    if output:
        _collection(output, "payload.output", problems)
    if output_run:
        _collection(output_run, "payload.outputRun", problems)
    if output and output in inputs:
        problems.append(f"payload.output {output!r} is also an input collection")

    site = config.get("computeSite")
    if site is not None:
        from cpframe.execution.cluster import list_sites

        known = list_sites()
        if site not in known:
            problems.append(f"computeSite {site!r} is not a known site; known sites: {', '.join(known)} "
                            "(site profiles: YAML files in cluster/ or ~/.config/cpframe/sites)")
    site_file = None
    site_sec = config.get("site")
    if isinstance(site_sec, Mapping) and isinstance(site_sec.get(site), Mapping):
        site_file = site_sec[site].get("siteFile")
    site_file = site_file or config.get("siteFile")
    if site_file is not None and not isinstance(site_file, str):
        problems.append(f"siteFile must be a path, got {site_file!r}")

    mem = _memory_mib(config.get("requestMemory"), "requestMemory", problems)
    cpus = _int(config.get("requestCpus"), "requestCpus", problems, 1)
    root_limits = _limits(config, "", problems)
    retries = root_limits.retries
    clusters = _clusters(config.get("cluster"), problems)
    pipetasks = _pipetasks(config.get("pipetask"), problems)

    env = config.get("environment") or {}
    if not isinstance(env, Mapping):
        problems.append(f"environment must be a mapping NAME: value, got {env!r}")
        env = {}
    extra = config.get("extraQgraphOptions") or ""
    if not isinstance(extra, str):
        problems.append(f"extraQgraphOptions must be text, got {extra!r}")
        extra = ""
    overrides, ignored_opts = _qgraph_options(extra, problems)
    ignored_keys = _ignored_keys(config)

    if problems:
        items = "\n".join(f"  - {p}" for p in problems)
        raise SubmissionError(MSG_INVALID.format(source=source, n=len(problems),
                                                 s="s" if len(problems) > 1 else "", items=items))

    def s(key: str) -> str:
        v = config.get(key)
        return "" if v is None else str(v)

    return Submission(
        pipeline_yaml=pipeline_yaml, payload_name=payload_name, butler_config=butler,
        in_collections=tuple(inputs), data_query=query, output=output, output_run=output_run,
        compute_site=site, site_file=site_file,
        request_memory_mib=mem if mem is not None else DEFAULT_REQUEST_MEMORY_MIB,
        request_cpus=cpus if cpus is not None else DEFAULT_REQUEST_CPUS,
        number_of_retries=retries, clusters=clusters, pipetasks=pipetasks,
        project=s("project"), campaign=s("campaign"), operator=s("operator"), timestamp=s("timestamp"),
        submit_path=s("submitPath"), uniq_proc_name=s("uniqProcName"), extra_qgraph_options=extra,
        environment=tuple((str(k), str(v)) for k, v in env.items()), config=dict(config),
        request_memory_explicit="requestMemory" in config, limits=root_limits,
        config_overrides=tuple(overrides), ignored_options=tuple(ignored_opts), ignored_keys=ignored_keys,
    )


def _qgraph_options(text: str, problems: list[str]) -> tuple[list[tuple[str, str, Any]], list[str]]:
    """``extraQgraphOptions`` -> (``--config`` overrides, other options cpframe does not use)."""
    import shlex

    from cpframe.core.errors import PipelineError
    from cpframe.execution.lsst_config import parse_config_overrides

    try:
        words = shlex.split(text)
    except ValueError as err:
        problems.append(f"extraQgraphOptions does not parse as a command line: {err}")
        return [], []
    items, ignored = [], []
    i = 0
    while i < len(words):
        w = words[i]
        name, eq, val = w.partition("=")
        if name in ("--config", "-c"):
            if not eq:
                i += 1
                val = words[i] if i < len(words) else ""
            items.append(val)
        elif name in ("--config-file", "-C"):
            problems.append(f"extraQgraphOptions {w}: --config-file is not supported by cpframe; give each field "
                            "as --config label:field=value")
            i += 1 if not eq else 0
        else:
            ignored.append(w)
        i += 1
    try:
        return parse_config_overrides(items), ignored
    except PipelineError as err:
        problems.append(f"extraQgraphOptions: {err}")
        return [], ignored


def _ignored_keys(config: Mapping[str, Any]) -> tuple[str, ...]:
    """Keys present (at the root, in cluster.* or pipetask.*) that cpframe ignores, sorted."""
    found = {k for k in config if k in IGNORED_KEYS}
    for sec in ("cluster", "pipetask"):
        for sub in (config.get(sec) or {}).values() if isinstance(config.get(sec), Mapping) else ():
            if isinstance(sub, Mapping):
                found |= {k for k in sub if k in IGNORED_KEYS}
                if any(str(k).startswith("partition") for k in sub):
                    found.add("partitionDimensions")
    return tuple(sorted(found))


def check_against_pipeline(submission: Submission, pipeline: Any) -> list[str]:
    """Notes for cluster and pipetask labels that name no task of the pipeline.

    BPS clusters and sizes only the tasks its quantum graph has and passes over other labels: one
    template serves several instruments (cp_pipe's ``bps_flat_*`` cluster ``cpFlatMeasure``, which
    LATISS's single-detector ``cpFlat.yaml`` does not have).  cpframe does the same, but says so: each
    such label is one note of the plan (with the closest task label, for a typo), never an error.

    Parameters
    ----------
    submission : Submission
    pipeline : cpframe.execution.pipeline.PipelineSpec
        Anything with ``name`` and ``labels`` (tuple of task labels).

    Returns
    -------
    list of str
        One note per section naming labels the pipeline does not have (empty when all are tasks).
    """
    import difflib

    labels = set(pipeline.labels) | set(getattr(pipeline, "folded", ()))  # folded tasks: resources unused

    def hint(t: str) -> str:
        close = difflib.get_close_matches(t, sorted(labels), n=1)
        return f" (did you mean {close[0]!r}?)" if close else ""

    where = [(f"cluster.{c.label}.pipetasks", t) for c in submission.clusters for t in c.pipetasks if t not in labels]
    where += [(f"pipetask.{r.label}", r.label) for r in submission.pipetasks if r.label not in labels]
    return [f"{sec} names {t!r}{hint(t)}, not a task of pipeline {pipeline.name} (its tasks: "
            f"{', '.join(pipeline.labels)}): ignored, as BPS ignores labels its quantum graph does not have"
            for sec, t in where]
