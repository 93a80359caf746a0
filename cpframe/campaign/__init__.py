"""Whole campaigns: the dependency-ordered runner (``runner``), deployment with its
self-check (``deploy``) and the demo driver (``demo``); after the build (docs/lifecycle.md):
review and approval recorded in the ledger (``lifecycle``, ``ledger_page``), distribution to
sites (``distribute``) and curated text tooling (``curated_text``).

May import: every package except ``cpframe.cli``.
"""
