"""YAML files into typed models (pydantic v2), with errors a person can act on.

Every YAML file cpframe reads (settings, campaign files, camera models, simulator
plans, ``curated.yaml``, and the templates, pipelines and site files of
``cpframe.execution``) is described by a :class:`Schema` subclass and loaded with
:func:`load_yaml` (a file) or :func:`validate` (data already read).  What goes wrong
comes back as the caller's error class (a :class:`cpframe.core.errors.ConfigError`
unless told otherwise), **one line per problem**, each naming the file, the key path
and what is allowed::

    templates/campaign_demo.yaml: steps[2].kind: 'sumbit' is not allowed; use one of 'submit', 'certify', 'report', 'deploy'
    templates/campaign_demo.yaml: steps[2].colour: unknown key; allowed keys: band, builds, doc, kind, name, needs, template, vars, verifies

A schema is the shape of the file (keys, types, allowed values, defaults); checks
that need other data (does the template exist, is the filter in the camera) stay with
the reader and are reported in the same style with :func:`problem_line`.

How to describe a file
----------------------
.. code-block:: python

    class Night(Schema):
        day_obs: int
        blocks: list[Block] = []

    class PlanFile(Schema):
        instrument: str | None = None
        nights: list[Night]

    plan = load_yaml(path, PlanFile, error=UserInputError)

Keys with dashes (``busy-timeout-s``) use ``Field(alias="busy-timeout-s")``; unknown
keys are errors (``extra="forbid"``) unless a schema says ``extra="allow"``.
"""

from __future__ import annotations

import datetime as _dt
import os
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Iterable, Mapping, TypeVar

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError

from cpframe.core import yamlsafe
from cpframe.core.errors import ConfigError, CpframeError

__all__ = ["Schema", "OpenSchema", "Text", "load_yaml", "validate", "check", "read_yaml", "problem_line", "SchemaErrors"]

M = TypeVar("M", bound=BaseModel)


def _as_text(value: Any) -> Any:
    if isinstance(value, (int, float, _dt.date)) and not isinstance(value, bool):
        return str(value)
    return value


#: Text as a person writes it in YAML: unquoted numbers and dates are read as their text
#: (``RERUN: 20250207a`` is text anyway; ``START_DATE: 2024-11-10`` stays ``"2024-11-10"``).
Text = Annotated[str, BeforeValidator(_as_text)]


class Schema(BaseModel):
    """Base of every file schema: unknown keys are errors, values are frozen after loading."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class OpenSchema(BaseModel):
    """A schema whose file may carry keys other readers use (kept, not checked)."""

    model_config = ConfigDict(extra="allow", frozen=True, populate_by_name=True)


class SchemaErrors(list):
    """The problem lines of one failed validation (a list of str)."""


def problem_line(source: str, path: str, message: str) -> str:
    """One problem, in the style of every schema error.

    >>> problem_line("plan.yaml", "nights[0].day_obs", "must be YYYYMMDD")
    'plan.yaml: nights[0].day_obs: must be YYYYMMDD'
    """
    return ": ".join(x for x in (source, path, message) if x)


def _loc_text(loc: Iterable[Any]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _unwrap(tp: Any) -> list[Any]:
    """The concrete types inside ``Optional``/``Union``/``Annotated``."""
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(tp)[0])
    if origin is typing.Union or origin is types.UnionType:
        return [t for a in typing.get_args(tp) for t in _unwrap(a)]
    return [tp]


def _model_at(model: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """The model describing the mapping at ``loc`` (used to list the allowed keys)."""
    current: list[Any] = [model]
    for part in loc:
        nxt: list[Any] = []
        for tp in current:
            for t in _unwrap(tp):
                origin = typing.get_origin(t)
                if isinstance(t, type) and issubclass(t, BaseModel) and isinstance(part, str):
                    for name, f in t.model_fields.items():
                        if part in (name, f.alias):
                            nxt.append(f.annotation)
                elif origin in (list, tuple, typing.Sequence) and isinstance(part, int):
                    nxt += [a for a in typing.get_args(t) if a is not Ellipsis]
                elif origin in (dict, typing.Mapping) and typing.get_args(t):
                    nxt.append(typing.get_args(t)[1])
        current = nxt
    for tp in current:
        for t in _unwrap(tp):
            if isinstance(t, type) and issubclass(t, BaseModel):
                return t
    return None


def _allowed_keys(model: type[BaseModel]) -> str:
    return ", ".join(sorted(f.alias or n for n, f in model.model_fields.items()))


def _message(err: Mapping[str, Any], model: type[BaseModel]) -> str:
    kind = err["type"]
    ctx = err.get("ctx") or {}
    value = err.get("input")
    if kind == "extra_forbidden":
        parent = _model_at(model, tuple(err["loc"][:-1]))
        allowed = f"; allowed keys: {_allowed_keys(parent)}" if parent else ""
        return f"unknown key{allowed}"
    if kind == "missing":
        return "is required but missing"
    if kind in ("literal_error", "enum"):
        return f"{value!r} is not allowed; use one of {ctx.get('expected', '')}"
    shown = repr(value)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    msg = str(err["msg"])
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    return f"{shown}: {msg[0].lower() + msg[1:]}" if msg else shown


def error_lines(err: ValidationError, model: type[BaseModel], source: str, prefix: str = "") -> SchemaErrors:
    """The one-line messages of a pydantic ``ValidationError``."""
    lines = SchemaErrors()
    for e in err.errors(include_url=False):
        loc = _loc_text(e["loc"])
        path = f"{prefix}.{loc}" if prefix and loc else (prefix or loc)
        line = problem_line(source, path, _message(e, model))
        if line not in lines:
            lines.append(line)
    return lines


def validate(data: Any, model: type[M], source: str, *, error: type[CpframeError] = ConfigError,
             prefix: str = "") -> M:
    """Validate already-read data into ``model``.

    Parameters
    ----------
    data
        What ``yaml.safe_load`` returned (or any mapping).
    model
        The schema.
    source
        What to name in messages (a file path, ``cpframe settings``...).
    error
        The error class to raise (default :class:`ConfigError`).
    prefix
        Key path of ``data`` inside its file (e.g. ``cpframe`` for the settings).

    Raises
    ------
    error
        Every problem, one line each.
    """
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise error(problem_line(source, prefix, f"expected a mapping of keys, got {type(data).__name__} {data!r:.60}"))
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise error("\n".join(error_lines(err, model, source, prefix))) from None


def check(data: Any, model: type[M], problems: list[str], *, source: str = "", prefix: str = "") -> M | None:
    """Like :func:`validate`, but add the problem lines to ``problems`` and return None.

    For readers that list every problem of a file at once (a plan's nights, a campaign's
    steps): validate each part, keep going, raise once at the end.  When unknown keys are
    the only problem, they are reported and the part is still returned without them, so
    that the checks that follow can find the other problems of the same part.
    """
    if not isinstance(data, Mapping):
        problems.append(problem_line(source, prefix, f"expected a mapping of keys, got {data!r:.60}"))
        return None
    try:
        return model.model_validate(data)
    except ValidationError as err:
        problems.extend(error_lines(err, model, source, prefix))
        known = {n for n in model.model_fields} | {f.alias for f in model.model_fields.values() if f.alias}
        if all(e["type"] == "extra_forbidden" and len(e["loc"]) == 1 for e in err.errors()):
            try:
                return model.model_validate({k: v for k, v in data.items() if k in known})
            except ValidationError:
                return None
        return None


def read_yaml(path: str | os.PathLike, *, text: str | None = None, source: str | None = None,
              error: type[CpframeError] = ConfigError, max_nodes: int = 100_000) -> Any:
    """Safe YAML load of a file (or of ``text`` read from it), with a one-line error naming it.

    Alias expansion is bounded (:func:`cpframe.core.yamlsafe.load`, at most ``max_nodes`` nodes once
    expanded): a configuration file is far smaller, and an alias bomb is refused before it is built.

    Raises
    ------
    error
        The file cannot be read or is not YAML (the line and column are named).
    """
    source = source or str(path)
    if text is None:
        try:
            text = Path(path).read_text()
        except OSError as err:
            raise error(f"{source}: cannot read: {err.strerror or err}") from None
    try:
        return yamlsafe.load(text, source, max_nodes=max_nodes)  # bounded aliases (issue 11)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        what = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise error(f"{source}: not valid YAML{where}: {what}") from None


def load_yaml(path: str | os.PathLike, model: type[M], *, text: str | None = None, source: str | None = None,
              error: type[CpframeError] = ConfigError) -> M:
    """Read a YAML file into ``model`` (see :func:`read_yaml` and :func:`validate`)."""
    source = source or str(path)
    return validate(read_yaml(path, text=text, source=source, error=error), model, source, error=error)
