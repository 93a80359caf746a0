"""Whole campaigns: the dependency-ordered runner (``runner``), deployment with its
self-check (``deploy``) and the demo driver (``demo``).

May import: every package except ``cpframe.cli``.
"""
