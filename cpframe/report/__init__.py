"""The static HTML verification report (``html``) and its assets (``assets/``).

May import: ``cpframe.core``, ``cpframe.camera``, ``cpframe.repository``, ``cpframe.science``,
``cpframe.verify``.
"""
