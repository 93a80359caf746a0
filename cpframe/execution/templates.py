"""Render a submission template: Jinja2 (sandboxed) + BPS substitution -> plain dict.

A template is YAML with the BPS keys of spec templates.md §1.  Rendering is one
stage (``cpframe render``) and runs in this order:

1. **Jinja2**, in an immutable sandbox with no loader: a template can loop and
   branch over the environment variables (``{% for band in BANDS.split() %}``),
   but cannot read files, import, or reach Python internals.  The context holds
   every environment variable as a name, plus ``env`` (the same, as a mapping).
2. **YAML** -> mapping; ``includeConfigs`` files are rendered the same way and
   merged underneath (the including file wins; later includes win over earlier).
3. **BPS substitution** of every string value, lazily and recursively:

   a. ``${NAME}`` / ``$NAME`` from the environment first;
   b. then ``{key}`` (``str.format`` syntax, ``{key:03}`` works) looked up in the
      search order ``cmdline > payload > cluster > pipetask > site > cloud >
      computed > root`` (``cluster``/``pipetask`` = the sub-section of the value's
      own cluster or task; ``site``/``cloud`` = ``site.<computeSite>`` /
      ``cloud.<computeCloud>``).  Cycles are an error.

Computed values: ``timestamp`` (UTC ``YYYYMMDDTHHMMSSZ``, once per rendering),
``operator`` (login name, unless set), ``uniqProcName`` (``outputRun`` with ``/``
-> ``_``); defaults ``payload.output = u/{operator}/{payloadName}``,
``payload.outputRun = {output}/{timestamp}``, ``submitPath =
<cwd>/submit/{outputRun}``.

cpframe is **strict** where BPS is silent: every unset environment variable and
every unknown ``{key}`` is collected, and one :class:`UndefinedVariablesError`
lists them all.  ``allow_unset=True`` restores BPS: an unset ``${NAME}`` is left
verbatim and an unknown ``{key}`` becomes ``""``.

cp_pipe compatibility: when ``CP_PIPE_DIR`` (``CP_VERIFY_DIR``) is unset,
``${CP_PIPE_DIR}/pipelines/<INSTRUMENT>/<file>`` is read as
``${CPFRAME_PIPELINES}/<file>``; ``CPFRAME_PIPELINES`` defaults to the project's
``pipelines/`` folder (:func:`default_pipelines_dir`).
"""

from __future__ import annotations

import copy
import datetime as _dt
import getpass
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import jinja2
import yaml
from jinja2.sandbox import SecurityError

from cpframe.core import yamlsafe
from cpframe.core.errors import TemplateError, UndefinedVariablesError
from cpframe.execution.limits import BoundedSandbox, render_bounded
from cpframe.execution.template_files import (  # noqa: F401 (defined there, read before jinja2 is imported)
    default_pipelines_dir,
    default_templates_dir,
    find_template,
)

__all__ = [
    "Rendering",
    "SEARCH_ORDER",
    "SKIP_NAMES",
    "default_pipelines_dir",
    "default_templates_dir",
    "dump_rendered",
    "find_template",
    "make_timestamp",
    "render",
    "render_template",
    "render_text",
]

#: Sections searched for a ``{key}``, first hit wins (spec templates.md §8).
SEARCH_ORDER = ("cmdline", "payload", "cluster", "pipetask", "site", "cloud", "computed", "root")

#: ``{name}`` placeholders kept literally for later filling (BPS ``skipNames``).
SKIP_NAMES = frozenset({"qgraphFile", "qgraphNodeId", "qgraphJobId", "qgraphId"})

MSG_UNDEFINED = (
    "{path}: {what}. Export them or pass --var NAME=VALUE (templates/README.md lists each "
    "template's variables); --allow-unset leaves them as BPS does."
)
MSG_SANDBOX = (
    "{path}: the template tried something the sandbox refuses ({detail}). Templates may use "
    "variables, loops and conditions only; they cannot read files or run code."
)
MSG_INCLUDE_JINJA = (
    "{path}: Jinja include/import/extends of {name!r} is not allowed (templates cannot read "
    "files). Merge other YAML files with includeConfigs instead."
)
MSG_CYCLE = "{path}: {{key}} references form a cycle: {chain}. Break it by giving one of them a value."

_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)")
_FORMAT_RE = re.compile(r"\{\{|\}\}|\{([^{}]*)\}")
_FIELD_RE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)(?::(.*))?$", re.S)
_MASK = "\x00{}\x00"
_MASK_RE = re.compile("\x00(\\d+)\x00")
# ${CP_PIPE_DIR}/pipelines/<INSTRUMENT or ${INSTRUMENT}>/ (and CP_VERIFY_DIR): cp_pipe's layout
_CP_DIR_RE = {
    name: re.compile(r"\$(?:\{%s\}|%s\b)/pipelines/(?:\$\{?INSTRUMENT\}?|[A-Za-z0-9_.-]+)/" % (name, name))
    for name in ("CP_PIPE_DIR", "CP_VERIFY_DIR")
}

# ${CP_PIPE_DIR}/bps/... (or CP_VERIFY_DIR): BPS include files of the stack packages
_STACK_BPS_RE = re.compile(r"^\$(?:\{(CP_PIPE_DIR|CP_VERIFY_DIR)\}|(CP_PIPE_DIR|CP_VERIFY_DIR)\b)/bps/")

def make_timestamp(now: _dt.datetime | None = None) -> str:
    """Collection timestamp, UTC ``YYYYMMDDTHHMMSSZ``.

    >>> make_timestamp(_dt.datetime(2025, 2, 7, 18, 15, 12, tzinfo=_dt.timezone.utc))
    '20250207T181512Z'
    """
    now = now or _dt.datetime.now(_dt.timezone.utc)
    if now.tzinfo is None:
        now = now.replace(tzinfo=_dt.timezone.utc)
    return now.astimezone(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")


@dataclass(frozen=True)
class Rendering:
    """The result of rendering one template (what provenance records)."""

    path: str
    """The template file (``<string>`` for text)."""
    config: dict
    """The fully resolved submission, a plain dict."""
    timestamp: str
    """UTC ``YYYYMMDDTHHMMSSZ`` used for ``{timestamp}``."""
    environment: dict = field(default_factory=dict)
    """Environment variables the template read: name -> value."""
    unset: tuple = ()
    """Names left unresolved (only with ``allow_unset``)."""
    includes: tuple = ()
    """Absolute paths of the ``includeConfigs`` files merged in."""
    notes: tuple = ()
    """Things a person should know (e.g. a cp_pipe path mapped onto cpframe's pipelines/)."""
    source: str = ""
    """The template text as read."""
    stack_env: dict = field(default_factory=dict, repr=False, compare=False)
    """The stack package variables (``*_DIR``) of the rendering environment: LSST pipeline imports use them."""


# ---------------------------------------------------------------------------- Jinja stage
class _NoFilesLoader(jinja2.BaseLoader):
    def get_source(self, environment, template):  # noqa: D102 - refuses every file
        raise jinja2.TemplateNotFound(template)


def _make_undefined(record: list[str]):
    class _RecordingUndefined(jinja2.ChainableUndefined):
        def _note(self):
            exc = object.__getattribute__(self, "_undefined_exception")
            if isinstance(exc, type) and issubclass(exc, SecurityError):
                self._fail_with_undefined_error()
            if self._undefined_name is not None and self._undefined_obj is jinja2.utils.missing:
                record.append(self._undefined_name)

        def __str__(self):
            self._note()
            return ""

        def __iter__(self):
            self._note()
            return iter(())

        def __bool__(self):
            self._note()
            return False

        def __len__(self):
            self._note()
            return 0

    return _RecordingUndefined


def _jinja(text: str, path: str, context: Mapping[str, str], record: list[str]) -> str:
    env = BoundedSandbox(  # the immutable sandbox plus size/loop/time limits (issue 11)
        loader=_NoFilesLoader(), undefined=_make_undefined(record), autoescape=False,
        keep_trailing_newline=True,
    )
    for name in ("lipsum", "cycler", "joiner"):
        env.globals.pop(name, None)
    try:
        return render_bounded(env, text, {**context, "env": dict(context)}, path)
    except SecurityError as err:
        raise TemplateError(MSG_SANDBOX.format(path=path, detail=err)) from None
    except jinja2.TemplateNotFound as err:
        raise TemplateError(MSG_INCLUDE_JINJA.format(path=path, name=err.name)) from None
    except jinja2.TemplateSyntaxError as err:
        raise TemplateError(f"{path}, line {err.lineno}: Jinja syntax error: {err.message}") from None
    except jinja2.TemplateError as err:
        raise TemplateError(f"{path}: Jinja error: {err}") from None
    except TemplateError as err:
        if str(err).startswith(path):
            raise
        raise TemplateError(f"{path}: {err}") from None
    except MemoryError:
        raise TemplateError(f"{path}: a Jinja expression ran out of memory; templates build small YAML.") from None
    except RecursionError:
        raise TemplateError(f"{path}: a Jinja expression nests too deeply.") from None
    except (ArithmeticError, TypeError, ValueError, LookupError) as err:
        # a template expression that fails (1/0, range() too big, bad filter argument) is bad input
        raise TemplateError(f"{path}: a Jinja expression failed: {type(err).__name__}: {err}") from None


#: Most YAML nodes a rendered template may expand to through aliases (a real one has ~100).
TEMPLATE_MAX_NODES = 100_000


def _load_yaml(text: str, path: str) -> dict:
    try:
        data = yamlsafe.load(text, path, max_nodes=TEMPLATE_MAX_NODES)  # bounded aliases (issue 11)
    except yamlsafe.YamlBombError as err:
        raise TemplateError(str(err)) from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f", line {mark.line + 1}" if mark is not None else ""
        raise TemplateError(f"{path}{where}: not valid YAML after Jinja rendering: "
                            f"{getattr(err, 'problem', None) or err}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise TemplateError(f"{path}: a template must be a YAML mapping of keys, got a {type(data).__name__}.")
    return data


def _deep_merge(base: dict, top: Mapping) -> dict:
    out = copy.deepcopy(base)
    for k, v in top.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


# ---------------------------------------------------------------------------- BPS stage
@dataclass(frozen=True)
class _Ctx:
    cluster: str | None = None
    pipetask: str | None = None


class _Resolver:
    """Lazy, recursive BPS substitution over one merged config (spec templates.md §2)."""

    def __init__(self, config: dict, env: Mapping[str, str], cmdline: Mapping[str, Any],
                 computed: Mapping[str, Any], allow_unset: bool, path: str):
        self.config = config
        self.env = env
        self.cmdline = dict(cmdline)
        self.computed = dict(computed)
        self.allow_unset = allow_unset
        self.path = path
        self.missing_env: dict[str, list[str]] = {}
        self.unknown_keys: dict[str, list[str]] = {}
        self.env_used: dict[str, str] = {}
        self.notes: list[str] = []
        self.deferred: dict[str, list[str]] = {}
        self._memo: dict[tuple[str, _Ctx], Any] = {}

    # -- lookup ------------------------------------------------------------------------
    def _section(self, name: str, ctx: _Ctx, stack: tuple) -> Mapping | None:
        if name == "cmdline":
            return self.cmdline
        if name == "computed":
            return self.computed
        if name == "root":
            return self.config
        sec = self.config.get(name)
        if not isinstance(sec, Mapping):
            return None
        if name == "payload":
            return sec
        if name in ("cluster", "pipetask"):
            label = ctx.cluster if name == "cluster" else ctx.pipetask
            sub = sec.get(label) if label else None
            return sub if isinstance(sub, Mapping) else None
        # site / cloud: the sub-section named by computeSite / computeCloud
        selector = "computeSite" if name == "site" else "computeCloud"
        if selector in stack:
            return None
        chosen = self.lookup(selector, _Ctx(), stack, optional=True)
        sub = sec.get(chosen) if chosen else None
        return sub if isinstance(sub, Mapping) else None

    def search(self, key: str, ctx: _Ctx, stack: tuple) -> tuple[bool, Any, str]:
        """Find the raw value of ``key``: (found, value, where)."""
        for name in SEARCH_ORDER:
            sec = self._section(name, ctx, stack)
            if sec is not None and key in sec:
                where = {"root": key, "cmdline": f"--var {key}", "computed": f"{key} (computed)"}.get(
                    name, f"{name}.{key}")
                return True, sec[key], where
        return False, None, ""

    def lookup(self, key: str, ctx: _Ctx, stack: tuple = (), optional: bool = False, where: str = "") -> Any:
        """Resolved value of ``key`` (strings expanded), or ``None`` when not found."""
        if key in stack:
            chain = " -> ".join(f"{{{k}}}" for k in (*stack[stack.index(key):], key))
            raise TemplateError(MSG_CYCLE.format(path=self.path, chain=chain))
        memo_key = (key, ctx)
        if memo_key in self._memo:
            return self._memo[memo_key]
        found, raw, found_at = self.search(key, ctx, (*stack, key))
        if not found:
            if not optional:
                self.unknown_keys.setdefault(key, [])
                if where and where not in self.unknown_keys[key]:
                    self.unknown_keys[key].append(where)
            return None
        value = raw() if callable(raw) else raw
        if isinstance(value, str):
            value = self.expand(value, ctx, (*stack, key), found_at)
        self._memo[memo_key] = value
        return value

    # -- expansion ---------------------------------------------------------------------
    def _map_cp_dirs(self, text: str, where: str) -> str:
        for name, rx in _CP_DIR_RE.items():
            if name not in self.env and rx.search(text):
                text = rx.sub("${CPFRAME_PIPELINES}/", text)
                note = (f"{where}: ${{{name}}} is unset, so ${name}/pipelines/<INSTRUMENT>/ was read as "
                        f"cpframe's pipelines folder ({self.env.get('CPFRAME_PIPELINES')}).")
                if note not in self.notes:
                    self.notes.append(note)
        return text

    def expand(self, text: str, ctx: _Ctx, stack: tuple, where: str) -> str:
        """Environment first, then ``{key}``; unset ``${X}`` text is masked from the second pass."""
        text = self._map_cp_dirs(text, where)
        masked: list[str] = []

        def env_sub(m: re.Match) -> str:
            name = m.group(1) or m.group(2)
            if name in self.env:
                self.env_used[name] = self.env[name]
                return self.env[name]
            if where.startswith("environment."):
                # BPS expands the environment section where the job runs: an unset variable
                # here is deferred to the worker (cpframe expands it there), not an error.
                self.deferred.setdefault(name, []).append(where)
                masked.append(m.group(0))
                return _MASK.format(len(masked) - 1)
            if self.search(name, _Ctx(), ())[0]:
                # ${outputRun}: a config key written as an environment variable; BPS leaves it as written
                note = (f"{where}: ${{{name}}} names a template key, not an environment variable; BPS leaves it "
                        f"as written (so does cpframe). Write {{{name}}} to substitute the key.")
                if note not in self.notes:
                    self.notes.append(note)
                masked.append(m.group(0))
                return _MASK.format(len(masked) - 1)
            places = self.missing_env.setdefault(name, [])
            if where not in places:
                places.append(where)
            masked.append(m.group(0))
            return _MASK.format(len(masked) - 1)

        text = _ENV_RE.sub(env_sub, text)

        def key_sub(m: re.Match) -> str:
            tok = m.group(0)
            if tok == "{{":
                return "{"
            if tok == "}}":
                return "}"
            fm = _FIELD_RE.match(m.group(1))
            if not fm:
                return tok  # not a {key} (e.g. literal braces); leave it
            key, spec = fm.group(1), fm.group(2)
            if key in SKIP_NAMES:
                return tok
            if key.startswith("wms") and len(key) > 3:
                return f"<WMS:{key[3].lower()}{key[4:]}>"
            value = self.lookup(key, ctx, stack, where=where)
            if value is None:
                return "" if self.allow_unset else tok
            return self._format(value, spec, key, where)

        text = _FORMAT_RE.sub(key_sub, text)
        return _MASK_RE.sub(lambda m: masked[int(m.group(1))], text)

    def _format(self, value: Any, spec: str | None, key: str, where: str) -> str:
        if isinstance(value, (dict, list)):
            raise TemplateError(f"{self.path}: {where} uses {{{key}}}, but {key} is a "
                                f"{type(value).__name__}, not a single value.")
        if not spec:
            return str(value)
        if isinstance(value, str) and re.fullmatch(r"-?\d+", value) and spec[-1:] not in ("s",):
            value = int(value)
        try:
            return format(value, spec)
        except (ValueError, TypeError) as err:
            raise TemplateError(f"{self.path}: {where}: cannot format {key}={value!r} with "
                                f"':{spec}': {err}") from None

    def resolve_tree(self, node: Any, ctx: _Ctx, where: str) -> Any:
        if isinstance(node, str):
            # a root or payload value is itself a searchable key: put it on the stack for cycle reports
            key = where.split(".", 1)[1] if where.startswith("payload.") else where
            return self.expand(node, ctx, (key,) if key.isidentifier() else (), where)
        if isinstance(node, list):
            return [self.resolve_tree(v, ctx, f"{where}[{i}]") for i, v in enumerate(node)]
        if isinstance(node, dict):
            out = {}
            for k, v in node.items():
                sub_ctx = ctx
                if where == "cluster":
                    sub_ctx = _Ctx(cluster=str(k), pipetask=ctx.pipetask)
                elif where == "pipetask":
                    sub_ctx = _Ctx(cluster=ctx.cluster, pipetask=str(k))
                out[k] = self.resolve_tree(v, sub_ctx, f"{where}.{k}" if where else str(k))
            return out
        return node


# ---------------------------------------------------------------------------- driver
def _places(d: Mapping[str, list[str]]) -> str:
    parts = []
    for name in sorted(d):
        at = d[name]
        shown = ", ".join(at[:3]) + (", ..." if len(at) > 3 else "")
        parts.append(f"{name} (in {shown})" if shown else name)
    return "; ".join(parts)


def _operator(env: Mapping[str, str]) -> str:
    for name in ("USER", "LOGNAME"):
        if env.get(name):
            return env[name]
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no login name in some containers
        return "unknown"


def _read_includes(cfg: dict, base_dir: Path, path: str, context: dict, jinja_missing: list[str],
                   env_missing: dict[str, list[str]], seen: tuple[Path, ...], includes: list[Path],
                   skipped: list[str] | None = None) -> dict:
    skipped = [] if skipped is None else skipped
    inc = cfg.pop("includeConfigs", None)
    if inc in (None, "", []):
        return cfg
    items = [s.strip() for s in inc.split(",")] if isinstance(inc, str) else inc
    if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
        raise TemplateError(f"{path}: includeConfigs must be a list of file names, got {inc!r}.")
    merged: dict = {}
    for item in items:
        unset = [m.group(1) or m.group(2) for m in _ENV_RE.finditer(item)
                 if (m.group(1) or m.group(2)) not in context]
        if unset and _STACK_BPS_RE.match(item.strip()):
            # e.g. ${CP_PIPE_DIR}/bps/caching/cp_caching.yaml without the stack: it only sets job
            # environment variables for butler caching, which cpframe's datastore does not read
            skipped.append(item)
            continue
        if unset:
            for name in unset:
                env_missing.setdefault(name, []).append("includeConfigs")
            continue
        expanded = _ENV_RE.sub(lambda m: context[m.group(1) or m.group(2)], item)
        p = Path(expanded)
        p = (p if p.is_absolute() else base_dir / p).resolve()
        if p in seen:
            chain = " -> ".join(str(s) for s in (*seen, p))
            raise TemplateError(f"{path}: includeConfigs form a cycle: {chain}.")
        if not p.is_file():
            raise TemplateError(f"{path}: includeConfigs file {expanded!r} not found (looked at {p}).")
        sub = _load_yaml(_jinja(p.read_text(), str(p), context, jinja_missing), str(p))
        sub = _read_includes(sub, p.parent, str(p), context, jinja_missing, env_missing, (*seen, p), includes,
                             skipped)
        includes.append(p)
        merged = _deep_merge(merged, sub)
    return _deep_merge(merged, cfg)


#: Keys that live under ``payload`` in a BPS submission (command-line values land there).
PAYLOAD_KEYS = frozenset({"payloadName", "butlerConfig", "inCollection", "dataQuery", "output", "outputRun", "runInit"})


def render_text(
    text: str,
    variables: Mapping[str, str] | None = None,
    *,
    path: str = "<string>",
    base_dir: str | os.PathLike | None = None,
    environ: Mapping[str, str] | None = None,
    allow_unset: bool = False,
    overrides: Mapping[str, Any] | None = None,
    now: _dt.datetime | None = None,
    cwd: str | os.PathLike | None = None,
) -> Rendering:
    """Render template text (see :func:`render`; ``path`` is only used in messages)."""
    env = dict(os.environ if environ is None else environ)
    env.update({str(k): str(v) for k, v in (variables or {}).items()})
    env.setdefault("CPFRAME_PIPELINES", str(default_pipelines_dir()))
    base = Path(base_dir) if base_dir is not None else Path(path).parent
    timestamp = make_timestamp(now)

    jinja_missing: list[str] = []
    env_missing: dict[str, list[str]] = {}
    includes: list[Path] = []
    seen = (Path(path).resolve(),) if path != "<string>" else ()
    cfg = _load_yaml(_jinja(text, path, env, jinja_missing), path)
    skipped_includes: list[str] = []
    cfg = _read_includes(cfg, base, path, env, jinja_missing, env_missing, seen, includes, skipped_includes)

    # cmdline: --var NAME=VALUE doubles as a key override (BPS command-line precedence)
    cmdline = {**(variables or {}), **(overrides or {})}
    payload = cfg.get("payload")
    if payload is None:
        payload = cfg["payload"] = {}
    if not isinstance(payload, dict):
        raise TemplateError(f"{path}: payload must be a mapping of keys, got {payload!r}.")
    for key, value in cmdline.items():
        if key in payload or key in PAYLOAD_KEYS:
            # BPS's own payload keys given on the command line set the payload even when
            # the template leaves them to their defaults (e.g. --var outputRun=...).
            payload[key] = value
        elif key in cfg or key in (overrides or {}):
            cfg[key] = value

    def has(key: str) -> bool:
        return key in payload or key in cfg or key in cmdline

    if not has("output"):
        payload["output"] = "u/{operator}/{payloadName}"
    if not has("outputRun"):
        payload["outputRun"] = "{output}/{timestamp}"
    if not has("submitPath"):
        cfg["submitPath"] = str(Path(cwd or os.getcwd()) / "submit") + "/{outputRun}"
    computed: dict[str, Any] = {"timestamp": timestamp}
    if not has("operator"):
        computed["operator"] = _operator(env)

    resolver = _Resolver(cfg, env, cmdline, computed, allow_unset, path)
    if not has("uniqProcName"):
        resolver.computed["uniqProcName"] = lambda: str(resolver.lookup("outputRun", _Ctx()) or "").replace("/", "_")
    resolved = resolver.resolve_tree(cfg, _Ctx(), "")
    for key in ("operator", "timestamp", "uniqProcName"):
        if key not in resolved:
            resolved[key] = resolver.lookup(key, _Ctx(), optional=True)
    if includes:
        resolved["includeConfigs"] = [str(p) for p in includes]

    missing = {name: list(places) for name, places in env_missing.items()}
    for name, places in resolver.missing_env.items():
        missing.setdefault(name, []).extend(p for p in places if p not in missing[name])
    for name in jinja_missing:
        missing.setdefault(name, [])
        if "Jinja" not in missing[name]:
            missing[name].append("Jinja")
    if (missing or resolver.unknown_keys) and not allow_unset:
        what = []
        if missing:
            what.append(f"environment variables not set: {_places(missing)}")
        if resolver.unknown_keys:
            what.append(f"unknown {{key}} references: {_places(resolver.unknown_keys)}")
        raise UndefinedVariablesError(
            MSG_UNDEFINED.format(path=path, what="; ".join(what)),
            variables=sorted(missing), keys=sorted(resolver.unknown_keys),
        )
    if not allow_unset:
        _check_names(path, resolver.env_used)
    unset = sorted({*missing, *(f"{{{k}}}" for k in resolver.unknown_keys)})
    notes = list(resolver.notes)
    for item in skipped_includes:
        notes.append(f"includeConfigs {item}: the stack package is not set up, so this BPS include (job "
                     "environment for butler caching) is skipped; cpframe's datastore does not read it.")
    if resolver.deferred:
        notes.append("environment: " + ", ".join(f"${{{n}}}" for n in sorted(resolver.deferred))
                     + " not set here; expanded on the workers where the tasks run (as BPS does on the compute node)")
    return Rendering(
        path=path, config=resolved, timestamp=timestamp, environment=dict(sorted(resolver.env_used.items())),
        unset=tuple(unset), includes=tuple(str(p) for p in includes), notes=tuple(notes), source=text,
        stack_env={k: v for k, v in env.items() if k.endswith("_DIR")},
    )


#: Strict-mode checks of the DMTN-222 naming variables (tests check the words).
MSG_EMPTY_TICKET = ("{path}: TICKET is set but empty, so every collection would be named "
                    "'<INSTRUMENT>/calib//...'. Export the ticket, e.g. TICKET=DM-48520.")
MSG_PREFIX_SLASH = ("{path}: USER_CALIB_PREFIX={value!r} does not end with '/', so it would be glued to the "
                    "instrument ('{value}LSSTComCam/calib/...'). Use {fixed!r} (or leave it empty).")


def _check_names(path: Any, env_used: Mapping[str, Any]) -> None:
    """Strict mode: an empty ``TICKET`` or a ``USER_CALIB_PREFIX`` without its trailing ``/`` is an
    error (issue 16: both rendered silently into wrong collection names); all problems at once."""
    problems = []
    if "TICKET" in env_used and not str(env_used["TICKET"]).strip():
        problems.append(MSG_EMPTY_TICKET.format(path=path))
    prefix = str(env_used.get("USER_CALIB_PREFIX", "") or "")
    if prefix and not prefix.endswith("/"):
        problems.append(MSG_PREFIX_SLASH.format(path=path, value=prefix, fixed=prefix.rstrip("/") + "/"))
    if problems:
        raise TemplateError(" ".join(problems))


def render(path: str | os.PathLike, variables: Mapping[str, str] | None = None, **kwargs: Any) -> Rendering:
    """Render a template file into a fully resolved submission.

    Parameters
    ----------
    path : str or os.PathLike
        The template file, or the bare name of a shipped template (``bps_flat_g``).
    variables : mapping, optional
        ``--var NAME=VALUE`` pairs: set (or override) environment variables, and
        override the template key of the same name (BPS command-line precedence).
    **kwargs
        ``environ`` (default ``os.environ``), ``allow_unset`` (default False),
        ``overrides`` (key -> value, command-line keys such as ``outputRun``),
        ``now`` (datetime for ``timestamp``), ``cwd`` (for the default ``submitPath``).

    Returns
    -------
    Rendering
        ``.config`` is the plain dict; the other fields are for provenance.

    Raises
    ------
    UndefinedVariablesError
        Unset environment variables or unknown ``{key}`` (all listed at once).
    TemplateError
        Unreadable file, bad YAML, sandbox violation, include problem, cycle.
    """
    p = find_template(path)
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise TemplateError(f"{p}: cannot read the template: {err}") from None
    return render_text(text, variables, path=str(p), base_dir=p.parent, **kwargs)


def render_template(path: str | os.PathLike, variables: Mapping[str, str] | None = None,
                    **kwargs: Any) -> dict:
    """Render a template file to a plain dict (:func:`render` without the provenance)."""
    return render(path, variables, **kwargs).config


def dump_rendered(config: Mapping[str, Any], fmt: str = "yaml") -> str:
    """Text of a rendered submission, ``yaml`` (keys in template order) or ``json``."""
    if fmt == "json":
        return json.dumps(config, indent=2, default=str) + "\n"
    if fmt == "yaml":
        return yaml.safe_dump(dict(config), sort_keys=False, default_flow_style=False, width=1000)
    raise TemplateError(f"unknown output format {fmt!r}; use yaml or json.")
