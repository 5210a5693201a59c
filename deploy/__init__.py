"""Deployment helpers: credentials, supervised processes, a loopback federation.

TLS material and node keys (``certs``), supervised processes (``processes``), the staged app
(``app_bundle``), a loopback SuperLink + SuperNodes federation (``local``) and a run with a
deletion filed mid-run (``run``).

Flower runs as separate programs (``flower-superlink``, ``flower-supernode``, ``flwr``);
these modules start and stop them and never import flwr.
"""
