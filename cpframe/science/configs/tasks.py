"""The configuration of :mod:`cpframe.science.tasks` (``CrConfig``, ``DEFAULT_FUSED_MEMORY_BYTES``), importable
without the science stack (module docstring of :mod:`cpframe.science.configs`); :mod:`cpframe.science.tasks`
re-exports it."""

from __future__ import annotations

from dataclasses import dataclass


#: Budget of what the fused path holds per input (state + row blocks of all raws): a worker stays
#: <= 300 MB at any N (benchmarks/bench_memory.py; RESULTS.md "Memory of a worker").
DEFAULT_FUSED_MEMORY_BYTES = 96 * 2**20


@dataclass(frozen=True)
class CrConfig:
    """Cosmic-ray finder settings (simplified meas_algorithms findCosmicRays, spec §5)."""

    min_sigma: float = 6.0
    """A CR pixel is this many sigma above the local median (sigma from the variance plane)."""
    min_dn: float = 150.0
    """...and at least this far above it (image units)."""
    neighbour_factor: float = 2.5
    """...and above the mean of its 8 neighbours by neighbour_factor x sigma (cond3_fac)."""
    cr_grow: int = 2
    """Grow CR masks by this many pixels."""
    n_cr_pixel_max: int = 10000
    """More CR pixels than this: log a warning, keep what was found (meas_algorithms' default; it raises)."""
    median_size: int = 5
    """Size of the local median filter."""
