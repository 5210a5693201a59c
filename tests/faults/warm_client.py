"""Preloaded by the kill test's forkserver: imports and first-use costs are paid once there,
so every client process forked from it starts in milliseconds instead of seconds.

Importing this module loads the kill test's dataset (cached in-process by the loader),
trains one tiny round with history recording in a throwaway folder and runs one
unlearning correction. Torch is limited to one thread first, so no thread pool exists when
the forkserver forks.
"""

from __future__ import annotations

import tempfile

import torch

torch.set_num_threads(1)

from faults.client_process import config_of, serve  # noqa: E402,F401 - the entry point, imported once here
from faults.kill_campaign_config import CLIENT_CONFIG  # noqa: E402
from fedunlearn import site_unlearning as su  # noqa: E402
from fedunlearn.deletion import DeletionRequest  # noqa: E402
from fedunlearn.site import ClientSite  # noqa: E402


def _warm_up() -> None:
    with tempfile.TemporaryDirectory() as folder:
        config = config_of({**CLIENT_CONFIG, "data.root": folder, "run.state-root": folder})
        site = ClientSite.open(config=config, partition_id=0, state_dir=folder, lineage="warm-up")
        state = site.build_model().state_dict()
        outcome = site.train_round(state, server_round=1)
        site.record_round_weights([1], [1.0])
        request = site.queue.submit(DeletionRequest.new(kind="sample", sample_ids=site.dataset.ids()[:2].tolist()))
        su.fast_correction(site, outcome.state, request, outer_step=0, remain_fisher=None)
        su.verify(site, outcome.state, request)


_warm_up()
