"""Foundations every other package may use: errors (with CLI exit codes), the data model
(collections, data IDs, dataset refs, TAI timespans) and settings (``cpframe.yaml``).

Owns: ``errors``, ``model``, ``config``, ``files`` (umask-honouring temporary files).  May import: nothing else from cpframe.
"""
