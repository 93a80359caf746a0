"""From a submission template to products in a RUN: template rendering (``templates``),
validated submissions (``submission``), pipelines (``pipeline``), task kinds defined once
(``kinds/``: options, defaults, planning and run of each kind), planning and the Dask graph
(``graph``, ``graph_tasks``), clusters (``cluster``), execution (``execute``), the stage
driver (``submit``) and provenance (``provenance``).

May import: ``cpframe.core``, ``cpframe.camera``, ``cpframe.repository``, ``cpframe.science``,
``cpframe.verify``.
"""
