"""From a submission template to products in a RUN: template rendering (``templates``),
validated submissions (``submission``), pipelines (``pipeline``; the LSST pipetask format in
``lsst_pipeline``; the dataset types both know in ``dataset_types``), task kinds defined once
(``kinds/``: options, defaults, planning and run of each kind), planning and the Dask graph
(``graph``, ``graph_tasks``; ``cluster.<label>`` groups in ``graph_clusters``), clusters (``cluster``), execution (``execute``), the stage
driver (``submit``), provenance (``provenance``), per-task resource requests (``resources``), BPS job
limits enforced by running a quantum in a child process (``isolate``: requestWalltime, retryUnlessExit,
memory growth), run
management (``runs``: detach, status, cancel) and the template sandbox limits (``limits``).

May import: ``cpframe.core``, ``cpframe.camera``, ``cpframe.repository``, ``cpframe.science``,
``cpframe.verify``.
"""
