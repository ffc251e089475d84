"""Running a real federation: deployment commands, a site's configuration, the roster.

``commands`` is the Python API of ``fedlora deploy`` (and fetches run directories); below it
``coordinator`` (the SuperLink and site registration), ``supernode`` (a site's node),
``flwr_cli`` (the operator's ``flwr`` connection and run submission) and ``host`` (Flower's
commands, environment and ports). ``site_config`` reads a site's ``site.toml`` (its files
checked by ``site_checks``; values for Flower's config strings in ``flower_values``); ``roster``
records which node is which enrolled site; ``loopback`` runs a whole TLS deployment on 127.0.0.1
(tests, benchmarks) from ``loopback_site`` (its sites) and ``processes`` (its process groups).
"""
