"""The science modules' configuration classes, importable without the science stack.

Every configuration class a pipeline task kind fills (:mod:`cpframe.execution.kinds`: ``CombineConfig``,
``IsrConfig``, ``DefectsConfig``...) is defined here, one module per science module, with the names and
constants it checks against; the science module re-exports it, so ``from cpframe.science.combine import
CombineConfig`` keeps working.  These modules import only the standard library, :mod:`cpframe.core` and each
other, never numpy, numba, astropy or scipy: the command that plans a submission reads the kinds' options and
defaults and validates the pipeline's settings without importing the science it never runs (issue 14: 0.5 s of
CPU of every ``cpframe submit``, which on a local run competes with the workers' own start).
``tests/test_kinds.py`` holds them to that.
"""
