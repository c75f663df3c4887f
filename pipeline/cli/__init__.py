"""The ``pipeline`` command line: a small module per command group over the supervisor and the shared queries.

=============  ====================================================
``app``        options every command shares, one error style
``run``        ``up``, ``autoscale``, ``scheduler``, ``exporter``
``check``      ``check``: a page now, what a monitor would watch
``monitors``   ``monitor add|show|list|pause|resume|rm``
``inspect``    ``status``, ``lag``, ``alerts``
``dlq``        ``dlq list|replay|purge``
``schemas``    ``schemas``: the producer contract
``common``     errors, connections, tables and JSON
``logs``       logging: ``-v``, ``-q``, ``--log-json``
=============  ====================================================
"""

from pipeline.cli.app import app, main

__all__ = ["app", "main"]
