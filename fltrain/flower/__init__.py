"""fltrain on Flower (extra ``flower``): the same federated training across real processes and machines.

- :mod:`~fltrain.flower.server_app` / :mod:`~fltrain.flower.client_app`: Flower's ServerApp and ClientApp
  (Message API) running fltrain's rounds; one SuperNode holds one partition;
- :mod:`~fltrain.flower.records`: what the messages carry, and the server's checks on what comes back;
- :mod:`~fltrain.flower.appdir`: the app directory (``pyproject.toml``) and the run config;
- :mod:`~fltrain.flower.launcher` and :mod:`~fltrain.flower.command`: ``fltrain flower``, a whole federation on
  127.0.0.1.

Only this package imports flwr (and only its ServerApp/ClientApp/records modules do); ``dpcalib``, ``fltrain.run``
and ``fltrain.cli`` never do.  See docs/flower.md.
"""
