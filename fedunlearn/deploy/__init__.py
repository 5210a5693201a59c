"""Deployment helpers: TLS material and node keys (``certs``), supervised processes
(``processes``) and a loopback SuperLink + SuperNodes federation (``local``).

Flower runs as separate programs (``flower-superlink``, ``flower-supernode``, ``flwr``);
these modules start and stop them and never import flwr.
"""
