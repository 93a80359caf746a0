"""Cameras: detector/amplifier models (``models``), the raw simulator (``simulate``) and the
curated calibration text files shipped per instrument (``curated``).

Owns: camera geometry and raw-file generation.  May import: ``cpframe.core``.
"""
