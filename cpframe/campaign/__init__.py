"""Whole campaigns: the vocabulary and file schema (``model``), reading a campaign file and
ordering its steps (``spec``), the runner (``runner``) with its state and construction
record (``state``), deployment with its self-check (``deploy``) and the demo driver (``demo``);
after the build (docs/lifecycle.md): review and approval recorded in the ledger
(``lifecycle``, ``ledger_page``), distribution to sites (``distribute``) and curated text
tooling (``curated_text``).

May import: every package except ``cpframe.cli``.
"""
