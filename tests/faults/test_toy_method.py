"""Adding a method is one module plus its registration: a toy method registered here serves a
request through a real phase of the real ServerApp and ClientApp (in-process transport).

The toy is CONTRIBUTING.md's worked example: ascent steps on the forget set, declared with
its settings and traits; nothing in the server or the client names it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from clients.client_app import app as client_app
from faults.harness import (
    LocalGrid,
    config_of,
    file_scheduled,
    node_contexts,
    resumed,
    run_in_process,
    unlearning_events,
)
from fedunlearn import protocol
from fedunlearn.config import Checks, MethodSettings
from fedunlearn.errors import ConfigError
from fedunlearn.types import Delta
from fedunlearn.unlearning import base, get_method
from fedunlearn.unlearning.base import MethodTraits
from fedunlearn.unlearning.common import Workspace, unlearning_method
from fedunlearn.unlearning.steps import apply_step, gradient_step

pytestmark = pytest.mark.faults


@dataclass(frozen=True)
class ScrubSettings(MethodSettings):
    """``unlearn.toy_scrub.lr`` plus the phase shape every method has."""

    lr: float = 0.2

    def check(self, checks: Checks) -> None:
        super().check(checks)
        checks.positive("lr", self.lr)


def toy_scrub(ws: Workspace) -> Delta:
    """Ascent steps on the forget set, from whatever model it is given."""
    ws.model.eval()
    batches = ws.split.forget.batches(32, shuffle=True, generator=ws.generator("s"), device=ws.device)
    for step, batch in enumerate(batches):
        delta = gradient_step(
            ws.model, batch.inputs, batch.labels, lr=ws.settings.lr, ascent=True, what="toy", step=step
        )
        apply_step(ws.model, delta, keep_ratio=None)
    return ws.change()


@pytest.fixture(autouse=True)
def registered() -> Iterator[None]:
    """Register the toy for one test, then take it out (the registry is process-wide)."""
    unlearning_method("toy_scrub", settings=ScrubSettings, traits=MethodTraits(fast="once", strengthen="repeat"))(
        toy_scrub
    )
    yield
    base._METHODS.pop("toy_scrub")  # noqa: SLF001 - tests only: the registry has no public removal


FEDERATION = {
    "data.dataset": "digits",
    "train.model": "mlp",
    "data.num-clients": 3,
    "data.samples-per-client": 150,
    "data.test-samples": 200,
    "data.partition": "by_class",
    "train.batch-size": 30,
    "train.lr": 0.1,
    "train.rounds": 2,
    "train.threads": 1,
    "unlearn.max-ta-drop": 0.5,
}


def test_a_registered_toy_method_is_configured_and_serves_a_request_in_a_real_phase(tmp_path: Path) -> None:
    # Prepare: a by-class federation trained two rounds; client 1 files a class deletion
    flat = {**FEDERATION, "run.out-dir": str(tmp_path), "run.state-root": str(tmp_path / "state")}
    base = config_of({**flat, "unlearn.method": "toy_scrub", "unlearn.toy_scrub.lr": 0.3})
    run_in_process(base, LocalGrid(client_app, node_contexts(3)))
    label = _a_class_of(base, client=1)
    (request_id,) = file_scheduled(base, f"2:1:class:{label}")

    # Execute: the engine resumes and serves the request with the toy method
    grid = LocalGrid(client_app, node_contexts(3, first_node_id=300))
    results = run_in_process(resumed(base, rounds=2), grid)

    # Assert: its own settings were read, a real phase ran (fast exchanges with the toy's
    # corrections, a commit the client judged), and the request was served with it
    assert get_method("toy_scrub").defaults().lr == 0.2 and base.unlearn.settings["toy_scrub"].lr == 0.3
    (event,) = unlearning_events(results)
    assert event["request_id"] == request_id and event["method"] == "toy_scrub"
    assert event["status"] == "served" and event["receipt"]["method"] == "toy_scrub"
    assert event["model_before"] != event["model_after"]
    sent = [m.metadata.message_type for m in grid.sent]
    assert protocol.TRAIN_FORGET in sent and protocol.QUERY_COMMIT in sent


def test_a_toy_methods_settings_are_checked_before_anything_runs() -> None:
    with pytest.raises(ConfigError, match="unlearn.toy_scrub.lr"):
        config_of({"unlearn.method": "toy_scrub", "unlearn.toy_scrub.lr": -1})


def _a_class_of(config: object, *, client: int) -> int:
    from fedunlearn.data import build_federated_data

    data = build_federated_data(config.data, seed=config.seed)  # type: ignore[attr-defined]
    return int(data.client_train(client).labels[0])
