"""Cameras: detector/amplifier models (``models``), observing plans (``plan``), the
simulator's injected truth (``truth``) and pixels and raw files (``simulate``; each effect with its
own truth in its module: ``bf``, ``cti``, ``nonlinearity``, ``spots``, ``illumination``, ``sky``, ``fringe``), and the
curated calibration text files shipped per instrument (``curated``).

Owns: camera geometry and raw-file generation.  May import: ``cpframe.core``.
"""
