"""One comparison: a federation with a deletion schedule, served by each method and control, and RT.

The engine runs of a comparison share a training trunk: the federation is trained once up
to the first round a deletion is filed at, then each label (a method, ``none``,
``finetune``) continues from a copy of it: the driver files the scheduled requests on the
clients' disks, the engine resumes and serves them with that label's method, then trains
the rounds the schedule still has. RT trains from the seeded initial model on clients
whose scheduled samples were excluded before round 1. Layout under ``out``::

    runs/trunk/   runs/<label>/   runs/RT/     each: state/, results.json, model.pt
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flwr.common.config import unflatten_dict

from fedunlearn.config import FederationConfig
from fedunlearn.deletion import DeletionReceipt
from fedunlearn.run_config import config_from_sections, config_to_flat
from fedunlearn.schedule import ScheduledDeletion, parse_schedule
from fedunlearn.unlearning import get_method, method_settings
from simulations.driver import EngineRun
from simulations.judge import client_site, scheduled_ids

TRUNK, RT = "trunk", "RT"
#: Labels of the controls every comparison carries next to its methods.
CONTROLS = ("none", "finetune")


@dataclass(frozen=True)
class Comparison:
    """A federation (``config``, its schedule in ``experiment.deletion-schedule``), the labels
    that serve its requests, and where everything goes.

    A label is a method name, or ``name@variant`` for the same method with other settings
    (``settings[label]``: flat ``unlearn.*`` run-config values). ``finetune@<label>`` is the
    fine-tune control with the step budget the phase of ``<label>`` actually used; a plain
    ``finetune`` matches the first method label.
    """

    config: FederationConfig
    labels: tuple[str, ...]
    out: Path
    settings: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    with_rt: bool = True
    trunk_source: Path | None = None  # a trained trunk of the same federation to copy instead of training

    @property
    def entries(self) -> tuple[ScheduledDeletion, ...]:
        """The schedule's entries."""
        return parse_schedule(self.config.experiment.deletion_schedule, num_clients=self.config.data.num_clients)

    def run_dir(self, name: str) -> Path:
        """The folder of one engine run (``trunk``, a label, ``RT``)."""
        return self.out / "runs" / name.replace("@", "-at-")

    def methods(self) -> list[str]:
        """The labels that are not controls, in order."""
        return [label for label in self.labels if method_of(label) not in CONTROLS]


def method_of(label: str) -> str:
    """The registered method a label serves with: ``name@variant`` -> ``name``."""
    return label.split("@", 1)[0]


def plan_runs(comparison: Comparison) -> list[EngineRun]:
    """The trunk, each label's continuation (one run per filing round), and RT, in order."""
    rounds = sorted({e.round for e in comparison.entries})
    if not rounds:
        raise ValueError("a comparison needs a deletion schedule")
    runs = [_trunk_run(comparison, rounds[0])]
    for label in comparison.labels:
        runs += _label_runs(comparison, label, rounds)
    if comparison.with_rt:
        runs.append(
            EngineRun(RT, lambda: _with_dirs(comparison, RT, comparison.config), lambda: _prepare_rt(comparison))
        )
    return runs


def _with_dirs(comparison: Comparison, name: str, config: FederationConfig, **run: Any) -> FederationConfig:
    folder = comparison.run_dir(name)
    return dataclasses.replace(
        config, run=dataclasses.replace(config.run, out_dir=str(folder), state_root=str(folder / "state"), **run)
    )


def _trunk_run(comparison: Comparison, first_round: int) -> EngineRun:
    """Train the trunk, or copy one trained for the same federation (then the engine only resumes it)."""
    source = comparison.trunk_source
    if source is None:
        return EngineRun(TRUNK, lambda: _trunk_config(comparison, first_round))

    def config() -> FederationConfig:
        trunk = _trunk_config(comparison, first_round)
        return dataclasses.replace(trunk, run=dataclasses.replace(trunk.run, resume=True))

    return EngineRun(TRUNK, config, lambda: copy_run(source, comparison.run_dir(TRUNK)))


def training_signature(comparison: Comparison) -> str:
    """What the trunk's training depends on (two comparisons with the same one share a trunk)."""
    rounds = min(e.round for e in comparison.entries)
    flat = config_to_flat(_trunk_config(comparison, rounds))
    ignored = ("run.out-dir", "run.state-root", "experiment.deletion-schedule")
    return json.dumps({k: v for k, v in sorted(flat.items()) if k not in ignored and not k.startswith("unlearn.")})


def _trunk_config(comparison: Comparison, first_round: int) -> FederationConfig:
    """Train up to the first filing round, recording every history a compared method reads."""
    config = comparison.config
    reads = {get_method(method_of(label)).traits.history for label in comparison.labels}
    history = dataclasses.replace(
        config.history,
        record_full=config.history.record_full or "dense" in reads,
        server_log=config.history.server_log or "server" in reads,
    )
    trunk = dataclasses.replace(config, history=history, train=dataclasses.replace(config.train, rounds=first_round))
    return _with_dirs(comparison, TRUNK, trunk)


def _label_runs(comparison: Comparison, label: str, rounds: list[int]) -> list[EngineRun]:
    """One run per filing round: file that round's requests, resume, train to the next one."""
    ends = [*rounds[1:], comparison.config.train.rounds]
    runs = []
    for index, (filed_at, until) in enumerate(zip(rounds, ends, strict=True)):
        entries = [e for e in comparison.entries if e.round == filed_at]

        def prepare(first: bool = index == 0, entries: list[ScheduledDeletion] = entries) -> None:
            if first:
                copy_run(comparison.run_dir(TRUNK), comparison.run_dir(label))
            file_requests(comparison.config, entries, state_root=comparison.run_dir(label) / "state")

        build = functools.partial(label_config, comparison, label, until)
        runs.append(EngineRun(f"{label}#{index + 1}", build, prepare))
    return runs


def label_config(comparison: Comparison, label: str, until: int) -> FederationConfig:
    """The base config serving with ``label``'s method and settings, resumed, trained to ``until``."""
    method = method_of(label)
    flat = {**config_to_flat(comparison.config), "unlearn.method": method, **comparison.settings.get(label, {})}
    if method == "finetune":
        flat.update(_matched_budget(comparison, label))
    config = config_from_sections(unflatten_dict(flat))
    config = dataclasses.replace(config, train=dataclasses.replace(config.train, rounds=until))
    return _with_dirs(comparison, label, config, resume=True)


def _matched_budget(comparison: Comparison, label: str) -> dict[str, Any]:
    """The fine-tune control's phase shape: the outer steps the matched method's phases ran
    (at most) and its remain steps, read from that method's results."""
    methods = comparison.methods()
    target = label.split("@", 1)[1] if "@" in label else (methods[0] if methods else None)
    if target is None:
        return {}
    used = phase_steps(comparison.run_dir(target))
    settings = method_settings(label_config(comparison, target, comparison.config.train.rounds).unlearn)
    return {
        "unlearn.finetune.outer-steps": max(used, 1) if used else settings.outer_steps,
        "unlearn.finetune.remain-steps": max(settings.remain_steps, 1),
    }


def phase_steps(run_dir: Path) -> int:
    """The most outer steps any phase of a finished run used (0 when it served none)."""
    path = run_dir / "results.json"
    if not path.exists():
        return 0
    events = json.loads(path.read_text(encoding="utf-8")).get("events", [])
    return max(
        (int(e.get("metrics", {}).get("outer_steps", 0)) for e in events if e.get("type") == "unlearning"), default=0
    )


def copy_run(source: Path, target: Path) -> None:
    """Copy a finished run's folder (hard links where possible: every store writes new files
    and renames them, never changing a file in place)."""
    if target.exists():
        shutil.rmtree(target)

    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(source, target, copy_function=link)


def file_requests(config: FederationConfig, entries: Sequence[ScheduledDeletion], *, state_root: Path) -> list[str]:
    """File each entry's request on its client's disk, as the node's data officer would."""
    filed = []
    for entry in entries:
        site = client_site(config, entry.partition_id, state_root)
        request = entry.to_request(scheduled_ids(site, entry))
        if request.request_id not in {r.request_id for r in site.queue.all()}:
            site.queue.submit(request)
            filed.append(request.request_id)
    return filed


def _prepare_rt(comparison: Comparison) -> None:
    """RT's clients: every scheduled sample excluded before round 1 (a served request each)."""
    state_root = comparison.run_dir(RT) / "state"
    if comparison.run_dir(RT).exists():
        shutil.rmtree(comparison.run_dir(RT))
    for entry in comparison.entries:
        site = client_site(comparison.config, entry.partition_id, state_root)
        ids = scheduled_ids(site, entry)
        request = site.queue.submit(entry.to_request(ids))
        receipt = DeletionReceipt(
            request_id=request.request_id,
            kind=request.kind,
            num_samples=len(ids),
            ids_hmac="",
            model_digest_before="",
            model_digest_after="",
            server_round=0,
            method="RT (excluded before training)",
        )
        site.queue.mark_served(request.request_id, resolved_ids=ids, receipt=receipt)
