"""Named snapshots of a client's state directory (benchmarks replay one moment many times).

A benchmark trains a federation once, snapshots every client's state (history, requests,
receipts), and then serves the same deletion requests with each method from that same
starting point: restore, unlearn, measure, restore again.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from fedunlearn.errors import FedUnlearnError

SNAPSHOT_PARTS: tuple[str, ...] = ("requests", "receipts", "history", "unlearning")
SNAPSHOTS_DIR = "snapshots"


def _snapshot_dir(state_dir: Path, name: str) -> Path:
    if not name or not all(c.isalnum() or c in "-_" for c in name):
        raise FedUnlearnError(f"snapshot name must be alphanumeric (with - or _), got {name!r}")
    return state_dir / SNAPSHOTS_DIR / name


def snapshot_state(state_dir: str | Path, name: str) -> Path:
    """Copy the state parts into ``<state_dir>/snapshots/<name>`` (replacing an older one)."""
    root = Path(state_dir)
    target = _snapshot_dir(root, name)
    staging = target.with_name(f".{name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for part in SNAPSHOT_PARTS:
        if (root / part).exists():
            shutil.copytree(root / part, staging / part)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return target


def restore_state(state_dir: str | Path, name: str) -> None:
    """Make the state parts exactly what snapshot ``name`` holds (parts it lacks are removed)."""
    root = Path(state_dir)
    source = _snapshot_dir(root, name)
    if not source.is_dir():
        raise FedUnlearnError(f"no snapshot {name!r} in {root / SNAPSHOTS_DIR}")
    for part in SNAPSHOT_PARTS:
        staging = root / f".{part}.restoring"
        shutil.rmtree(staging, ignore_errors=True)
        if (source / part).exists():
            shutil.copytree(source / part, staging)
        shutil.rmtree(root / part, ignore_errors=True)
        if staging.exists():
            staging.rename(root / part)
