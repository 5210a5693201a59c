"""The history's ``manifest.json`` (rounds, checksums, weights) and atomic file replacement.

Every change to the history ends with one atomic manifest write, so the manifest is the
commit point: a round file that the manifest does not list is an orphan of an interrupted
write and is removed on the next open.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from fedunlearn.errors import HistoryCorruptedError
from fedunlearn.history.layout import ParamLayout

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "fedunlearn-history"
MANIFEST_VERSION = 1
#: Suffix of files being written; they are renamed into place only when complete.
TMP_SUFFIX = ".tmp"

CORRUPTION_ADVICE = (
    "The stored history cannot be trusted. Restore the directory from a backup, or call "
    "HistoryStore.discard_round(round) for the affected round (deletions touching it must then "
    "be served by a method that needs no history, e.g. retraining or SFR-on), or delete the "
    "history directory to start over."
)


@dataclass(frozen=True)
class RoundEntry:
    """One committed round as the manifest lists it.

    ``dense_bytes`` is what unpruned float32 amnesiac storage would need (steps * |theta| * 4);
    ``weight`` is w_k^r, the aggregation weight of this client's update in the round (None
    until the server's aggregate is known).
    """

    round: int
    file: str
    sha256: str
    bytes: int
    steps: int
    dense_bytes: int
    index_sha256: str
    weight: float | None = None


@dataclass(frozen=True)
class Manifest:
    """Layout, recording settings and committed rounds of one client's history."""

    layout: ParamLayout
    settings: dict[str, Any]
    rounds: dict[int, RoundEntry] = field(default_factory=dict)

    def with_round(self, entry: RoundEntry) -> Manifest:
        """Return a copy with ``entry`` added, or replacing the entry of its round."""
        return replace(self, rounds={**self.rounds, entry.round: entry})

    def without_rounds(self, rounds: set[int]) -> Manifest:
        """Return a copy without the given rounds."""
        return replace(self, rounds={r: e for r, e in self.rounds.items() if r not in rounds})


def load_manifest(path: Path) -> Manifest:
    """Read and validate ``manifest.json``; raise HistoryCorruptedError naming what is wrong."""
    try:
        raw = json.loads(path.read_bytes())
        if raw.get("format") != MANIFEST_FORMAT or raw.get("version") != MANIFEST_VERSION:
            raise ValueError(
                f"format/version is {raw.get('format')!r}/{raw.get('version')!r}, "
                f"expected {MANIFEST_FORMAT!r}/{MANIFEST_VERSION}"
            )
        body = {k: raw[k] for k in ("layout", "settings", "rounds")}
        expected, actual = raw["checksum"], _checksum(body)
        if expected != actual:
            raise HistoryCorruptedError(
                f"{path} was modified: its content has sha256 {actual}, but its checksum field says "
                f"{expected}. {CORRUPTION_ADVICE}"
            )
        rounds = {int(item["round"]): RoundEntry(**item) for item in body["rounds"]}
        return Manifest(ParamLayout.from_json(body["layout"]), dict(body["settings"]), rounds)
    except HistoryCorruptedError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise HistoryCorruptedError(f"{path} is malformed ({type(err).__name__}: {err}). {CORRUPTION_ADVICE}") from err


def save_manifest(path: Path, manifest: Manifest) -> None:
    """Write the manifest atomically (with a checksum over its content)."""
    body = {
        "layout": manifest.layout.to_json(),
        "settings": manifest.settings,
        "rounds": [asdict(manifest.rounds[r]) for r in sorted(manifest.rounds)],
    }
    document = {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, **body, "checksum": _checksum(body)}
    atomic_write_bytes(path, (json.dumps(document, indent=1) + "\n").encode())


def _checksum(body: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file, fsync, ``os.replace`` and a directory fsync."""
    tmp = path.with_name(path.name + TMP_SUFFIX)
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    commit_file(tmp, path)


def commit_file(tmp: Path, final: Path) -> None:
    """Atomically rename a complete, fsynced temp file into place and fsync the directory."""
    os.replace(tmp, final)
    fsync_dir(final.parent)


def fsync_dir(directory: Path) -> None:
    """Flush a directory so renames and deletions in it survive a crash (no-op where unsupported)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
