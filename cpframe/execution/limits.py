"""Resource limits of template rendering: Jinja can loop and compute, but not without bound.

The Jinja sandbox stops a template from reading files or reaching Python internals, but not
from asking for ``{{ 'a' * 10**9 }}`` (3 GB), ``{{ 10**10**9 }}`` or two nested loops of a
hundred thousand iterations each (issue 11).  :class:`BoundedSandbox` adds:

* arithmetic: ``*``, ``**`` and ``+`` whose result would exceed :data:`MAX_TEXT` characters
  (or ``**`` beyond :data:`MAX_INT_BITS` bits) are refused *before* they are computed;
* calls: any argument or result integer used as a size (``'a'.ljust(n)``, ``center(n)``,
  ``indent(n)``...) above :data:`MAX_TEXT`, and more than :data:`MAX_CALLS` calls;
* loops: ``range`` counts every iteration of a rendering against :data:`MAX_ITERATIONS`;
* output: :func:`render_bounded` stops once :data:`MAX_TEXT` characters are produced, and
  (in the main thread) after :data:`MAX_SECONDS` of wall time whatever the template does.

Every limit ends in one :class:`~cpframe.core.errors.TemplateError` naming the limit.
"""

from __future__ import annotations

import contextlib
import functools
import math
import signal
import threading
import time
from typing import Any, Iterator, Mapping

from jinja2.sandbox import ImmutableSandboxedEnvironment

from cpframe.core.errors import TemplateError

__all__ = ["BoundedSandbox", "render_bounded", "MAX_TEXT", "MAX_ITERATIONS", "MAX_CALLS", "MAX_SECONDS",
           "MAX_INT_BITS"]

#: Longest string or list a template expression may build, and most characters rendered.
MAX_TEXT = 10_000_000
#: Most loop iterations (through ``range``) in one rendering.
MAX_ITERATIONS = 100_000
#: Most function/method/filter calls in one rendering.
MAX_CALLS = 100_000
#: Largest integer an expression may produce by ``**`` (bits).
MAX_INT_BITS = 4096
#: Wall-time budget of one rendering (enforced in the main thread).
MAX_SECONDS = 0.5


def _too_big(what: str, limit: str) -> TemplateError:
    return TemplateError(f"template expression refused: {what} would exceed the limit of {limit} "
                         "(cpframe.execution.limits); templates build small YAML, not large data.")


def _size(x: Any) -> int | None:
    return len(x) if isinstance(x, (str, bytes, list, tuple)) else None


class BoundedSandbox(ImmutableSandboxedEnvironment):
    """The immutable Jinja sandbox with the limits of this module (one instance per rendering)."""

    intercepted_binops = frozenset(["*", "**", "+", "//", "%"])

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.iterations = 0
        self.calls = 0
        self.globals["range"] = self._range
        # filters are called directly by the compiled template, not through call(): guard each
        self.filters = {name: self._guarded(f) for name, f in self.filters.items()}

    def _guarded(self, func: Any) -> Any:
        @functools.wraps(func)  # keeps jinja_pass_arg (pass_context / pass_environment)
        def filter_(*args: Any, **kwargs: Any) -> Any:
            self._check_call(args, kwargs)
            return self._check_result(func(*args, **kwargs))

        return filter_

    def _check_call(self, args: Any, kwargs: Mapping[str, Any]) -> None:
        self.calls += 1
        if self.calls > MAX_CALLS:
            raise _too_big("the calls of this template", f"{MAX_CALLS:,} calls")
        for a in list(args) + list(kwargs.values()):
            if isinstance(a, int) and not isinstance(a, bool) and abs(a) > MAX_TEXT:
                raise _too_big(f"an argument of {a:,}", f"{MAX_TEXT:,}")

    @staticmethod
    def _check_result(result: Any) -> Any:
        n = _size(result)
        if n is not None and n > MAX_TEXT:
            raise _too_big("the result of a call", f"{MAX_TEXT:,} characters")
        return result

    # -- loops -------------------------------------------------------------------------------
    def _range(self, *args: Any) -> Iterator[int]:
        r = range(*args)
        if len(r) > MAX_ITERATIONS:
            raise _too_big(f"range of {len(r):,} numbers", f"{MAX_ITERATIONS:,} iterations")
        return self._counted(r)

    def _counted(self, r: range) -> Iterator[int]:
        for i in r:
            self.iterations += 1
            if self.iterations > MAX_ITERATIONS:
                raise _too_big("the loops of this template", f"{MAX_ITERATIONS:,} iterations in all")
            yield i

    # -- arithmetic --------------------------------------------------------------------------
    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            n, k = (_size(left), right) if _size(left) is not None else (_size(right), left)
            if n is not None and isinstance(k, int) and n * max(k, 0) > MAX_TEXT:
                raise _too_big(f"repeating {n:,} items {k:,} times", f"{MAX_TEXT:,} characters")
            if isinstance(left, int) and isinstance(right, int) and \
                    left.bit_length() + right.bit_length() > MAX_INT_BITS:
                raise _too_big("this product", f"{MAX_INT_BITS} bits")
        elif operator == "**":
            if isinstance(left, (int, float)) and isinstance(right, (int, float)) and abs(left) > 1 and right > 0:
                bits = float(right) * math.log2(abs(left))
                if bits > MAX_INT_BITS:
                    raise _too_big(f"{left!r} ** {right!r}", f"{MAX_INT_BITS} bits")
        elif operator == "+":
            a, b = _size(left), _size(right)
            if a is not None and b is not None and a + b > MAX_TEXT:
                raise _too_big("this concatenation", f"{MAX_TEXT:,} characters")
        elif operator == "%" and isinstance(left, str):
            pass  # printf-style: the result is checked by its size below
        result = super().call_binop(context, operator, left, right)
        n = _size(result)
        if n is not None and n > MAX_TEXT:
            raise _too_big("this value", f"{MAX_TEXT:,} characters")
        return result

    # -- calls (methods, functions, filters through the sandbox) --------------------------------
    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        __self._check_call(args, kwargs)
        return __self._check_result(super().call(__context, __obj, *args, **kwargs))


@contextlib.contextmanager
def _deadline(seconds: float, path: str) -> Iterator[None]:
    """Raise TemplateError in the main thread after ``seconds`` of wall time (no-op elsewhere)."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield
        return

    def expired(_signum: int, _frame: Any) -> None:
        raise TemplateError(f"{path}: rendering took more than {MAX_SECONDS:g} s (cpframe.execution.limits); "
                            "a template builds small YAML: look for runaway loops.")

    old = signal.signal(signal.SIGALRM, expired)
    prev = signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        if prev[0]:  # someone else's timer was running: give it back what is left
            signal.setitimer(signal.ITIMER_REAL, max(prev[0] - seconds, 0.001), prev[1])


def render_bounded(env: BoundedSandbox, text: str, context: Mapping[str, Any], path: str) -> str:
    """Render ``text`` in ``env`` within the output-size and time limits."""
    template = env.from_string(text)
    out: list[str] = []
    n = 0
    t0 = time.monotonic()
    with _deadline(MAX_SECONDS, path):
        for chunk in template.generate(context):
            n += len(chunk)
            if n > MAX_TEXT:
                raise TemplateError(f"{path}: the rendered template exceeds {MAX_TEXT:,} characters "
                                    "(cpframe.execution.limits); look for runaway loops.")
            out.append(chunk)
            if time.monotonic() - t0 > MAX_SECONDS:  # the same budget where no timer can be set
                raise TemplateError(f"{path}: rendering took more than {MAX_SECONDS:g} s "
                                    "(cpframe.execution.limits); look for runaway loops.")
    return "".join(out)
