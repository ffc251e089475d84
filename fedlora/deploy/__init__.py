"""Running a real federation: deployment commands, a site's configuration, the roster.

``commands`` builds the SuperLink / SuperNode / registration / submit command lines and fetches
run directories; ``site_config`` reads a site's ``site.toml``; ``roster`` records which node is
which enrolled site; ``loopback`` runs a whole TLS deployment on 127.0.0.1 (tests, benchmarks).
"""
