"""Node-side commands a site's data officer runs against its SuperNode's state directory.

``fedunlearn forget`` queues a deletion request (``forget.py``), ``fedunlearn receipts``
lists served and pending requests (``receipts.py``); ``checks.py`` validates requests
offline against the files the node keeps (``site.json``, ``sample_ids.npy``,
``sample_labels.npy``, earlier requests). Nothing here talks to the network or imports flwr:
the node announces the queued request to the server at its next reply.
"""
