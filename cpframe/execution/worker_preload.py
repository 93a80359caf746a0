"""Imported by every local Dask worker as it starts (``LocalCluster(preload=...)``): the task code and the
science stack (numpy, astropy, scipy, numba: about a second), so that the first quantum of each worker does
not pay for them.  ``cpframe submit`` starts the local cluster while it plans (:mod:`cpframe.execution.submit`),
so these imports overlap the driver's own instead of delaying the first quanta.  It also makes the worker
process skip the interpreter's final garbage collections when it exits (:mod:`cpframe.core.quickexit`: 0.7-0.8 s
that closing the cluster waited for).
"""

from __future__ import annotations

import cpframe.execution.graph_tasks  # noqa: F401
import cpframe.execution.kinds  # noqa: F401
import cpframe.science.fused_tasks  # noqa: F401
from cpframe.core.quickexit import skip_final_gc

skip_final_gc()
