"""Foundations every other package may use: errors (with CLI exit codes), the data model
(collections, data IDs, dataset refs, TAI timespans and TAI from erfa), settings
(``cpframe.yaml``) and the YAML schema helper (``schema``, pydantic).

Owns: ``errors``, ``model``, ``config``, ``schema``, ``files`` (umask-honouring temporary files),
``yamlsafe`` (bounded YAML), ``paths``, ``progress``.  May import: nothing else from cpframe.
"""
