"""Whole campaigns: the vocabulary and file schema (``model``), reading a campaign file and
ordering its steps (``spec``), the runner (``runner``) with its state and construction
record (``state``), deployment with its self-check (``deploy``) and the demo driver (``demo``).

May import: every package except ``cpframe.cli``.
"""
