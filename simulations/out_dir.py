"""The output folder of a simulation: claimed with a marker, replaced or resumed safely.

A folder a run writes to holds a marker file (``.fedunlearn-run``). ``--overwrite`` deletes
only what a run wrote there (recognised by the marker) and refuses a folder that holds
anything else; ``--resume`` continues the run in it from its checkpoints, keeping its
pending requests.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

from fedunlearn.config import FederationConfig

MARKER = ".fedunlearn-run"
#: What a run writes at the top of its folder (everything else is refused by --overwrite).
RUN_ENTRIES = frozenset(
    {
        MARKER,
        "runs",
        "state",
        "models",
        "receipts",
        "results.json",
        "model.pt",
        "training.png",
        "comparison.json",
        "comparison.png",
        "cells",
        "work",
        "report.md",
        "tuning.md",
        "forget_metric.png",
        "cost.png",
    }
)


class OutDirError(Exception):
    """The output folder cannot be used as asked (the message says why and what to do)."""


def prepare(out: Path, *, overwrite: bool, resume: bool) -> None:
    """Make ``out`` ready: new, resumed, or (``overwrite``) emptied of an earlier run's files."""
    if out.exists() and not out.is_dir():
        raise OutDirError(f"--out {out} is a file, not a folder; choose a folder")
    entries = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if entries and resume:
        if MARKER not in entries:
            raise OutDirError(f"{out} holds no fedunlearn run to resume (no {MARKER}); choose the folder of a run")
        return
    if resume:
        raise OutDirError(f"{out} holds no run to resume; start it without --resume")
    if entries and not overwrite:
        raise OutDirError(
            f"{out} is not empty: it holds an earlier run (or other files). Pass --resume to continue that run, "
            "--overwrite to replace it, or choose another --out"
        )
    if entries:
        foreign = [e for e in entries if e not in RUN_ENTRIES]
        if MARKER not in entries or foreign:
            raise OutDirError(
                f"--overwrite refuses {out}: it holds files no fedunlearn run wrote ({', '.join(foreign[:5]) or 'no '}"
                f"{'' if foreign else MARKER}); choose an empty or new folder"
            )
        for name in entries:
            path = out / name
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("fedunlearn run folder: --overwrite may delete what a run wrote here\n")


def claim(out: Path) -> None:
    """Use ``out`` for a resumable command (the benchmark): new, or already a run folder."""
    if out.exists() and not out.is_dir():
        raise OutDirError(f"--out {out} is a file, not a folder; choose a folder")
    entries = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    foreign = [e for e in entries if e not in RUN_ENTRIES]
    if entries and MARKER not in entries and foreign:
        raise OutDirError(f"{out} holds files no fedunlearn run wrote ({', '.join(foreign[:5])}); choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("fedunlearn run folder: --overwrite may delete what a run wrote here\n")


def finished(run_dir: Path) -> bool:
    """Whether an engine run in ``run_dir`` completed (its results.json has a summary)."""
    path = run_dir / "results.json"
    if not path.exists():
        return False
    try:
        return bool(json.loads(path.read_text(encoding="utf-8")).get("summary"))
    except json.JSONDecodeError:
        return False


def resumable(config: FederationConfig) -> FederationConfig:
    """``config``, set to resume when its state root holds a checkpoint (a stopped run)."""
    from server.checkpoint import has_checkpoint

    if has_checkpoint(config.run.state_root):
        return dataclasses.replace(config, run=dataclasses.replace(config.run, resume=True))
    return config
