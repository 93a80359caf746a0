"""The science on arrays and files: FITS I/O (``imageio``), ISR (``isr``), combiners
(``combine``), defect finding (``defects``), the photon transfer curve (``ptc``) and the task
entry points on files (``tasks``); the types the ISR applies, each with its solve: linearity
(``linearity``), crosstalk (``crosstalk``), CTI (``cti``), the illumination correction (``illumination``:
star photometry and the super-star fit), fringe frames (``fringe``), and their direct calls (``drivers``);
sky frames (``sky``: cp_pipe's four cpSky steps, applied in science processing, not ISR);
the fused streaming ISR -> combine (``fused``, ``kernels``, ``overscan``); ``options`` reads the
configurations from cp_pipe names.  Nothing here knows about the registry or a cluster.

May import: ``cpframe.core``, ``cpframe.camera``.
"""
