"""A client's on-disk update history: one streamed file per round plus an atomic manifest.

Directory layout (one store per client, e.g. ``<client state dir>/history/``)::

    manifest.json                 layout, settings, rounds (file, sha256, bytes, steps,
                                  dense bytes, index sha256, weight w_k^r), own checksum
    round-000003-<token>.bin      one per round, see roundfile.py

Every change writes new files under temporary names, renames them into place and then
commits by replacing ``manifest.json`` atomically; superseded files are deleted afterwards.
A crash therefore leaves either the old or the new state plus stray files, which the next
open removes (logged). The store assumes one writer per directory at a time.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import secrets
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fedunlearn.config import HistoryConfig
from fedunlearn.errors import HistoryCorruptedError, HistoryError
from fedunlearn.history.layout import (
    RECORD_HEADER,
    RECORD_MAGIC,
    ParamLayout,
    RecordLayout,
    layout_digest,
    recording_settings,
)
from fedunlearn.history.manifest import (
    CORRUPTION_ADVICE,
    MANIFEST_NAME,
    TMP_SUFFIX,
    Manifest,
    RoundEntry,
    commit_file,
    fsync_dir,
    load_manifest,
    save_manifest,
)
from fedunlearn.history.recorder import RoundRecorder
from fedunlearn.history.results import HistorySum, RoundUsage, StepRef, StorageUsage
from fedunlearn.history.roundfile import RoundFileInfo, RoundFileReader, RoundFileWriter, file_sha256
from fedunlearn.types import SampleIds

logger = logging.getLogger(__name__)

IdsLike = Sequence[int] | np.ndarray | torch.Tensor
MISSING_ADVICE = (
    "Restore the history from a backup, or serve the request with a method that needs no history (e.g. sfr_on or "
    "retraining); an empty history would make the correction zero and the receipt a false claim."
)


@dataclass(frozen=True)
class _RoundPlan:
    entry: RoundEntry
    steps: np.ndarray = field(compare=False)


class HistoryStore:
    """The pruned layer-wise update history of one client (ALGORITHMS.md, "Update history").

    Records ``model.named_parameters()`` only: buffers such as BatchNorm running statistics
    are not recorded, so amnesiac corrections leave them unchanged. Opening a directory that
    holds a history of another layout or other recording settings raises HistoryError.
    ``HistoryConfig.enabled`` is the caller's switch (a client that does not record opens no
    store); the store itself always records.

    >>> import tempfile
    >>> store = HistoryStore.for_model(tempfile.mkdtemp(), model=nn.Linear(4, 3), config=HistoryConfig())
    >>> store.rounds(), store.usage().rounds
    ([], ())
    """

    def __init__(self, directory: str | Path, *, layout: ParamLayout, config: HistoryConfig) -> None:
        self.directory = Path(directory)
        self.layout, self.config = layout, config
        self._records = RecordLayout(layout, config)
        self._digest = layout_digest(layout, config)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._remove_strays(f"*{TMP_SUFFIX}", "an interrupted write")
        path = self.directory / MANIFEST_NAME
        if path.exists():
            self._manifest = load_manifest(path)
            self._check_compatible(self._manifest)
        else:
            self._manifest = self._fresh_manifest(path)
        listed = {entry.file for entry in self._manifest.rounds.values()}
        if self._listed_files_present(listed):
            self._remove_strays("round-*.bin", "a change that was never committed", keep=listed)

    @classmethod
    def for_model(cls, directory: str | Path, *, model: nn.Module, config: HistoryConfig) -> HistoryStore:
        """Open (or create) the store for ``model``'s trainable-parameter layout."""
        return cls(directory, layout=ParamLayout.from_model(model), config=config)

    @classmethod
    def open_existing(cls, directory: str | Path, *, model: nn.Module, config: HistoryConfig) -> HistoryStore:
        """Open a history that must already exist; never creates one.

        Raises HistoryError naming the directory when it or its ``manifest.json`` is missing
        (nothing is written), and the usual errors for a damaged or mismatched history.
        """
        folder = Path(directory)
        if not folder.is_dir():
            raise HistoryError(
                f"no update history at {folder}: the directory does not exist (deleted, moved, or never recorded). "
                f"Expected the history this client recorded while training. {MISSING_ADVICE}"
            )
        if not (folder / MANIFEST_NAME).is_file():
            if any(folder.glob("round-*.bin")):
                raise HistoryCorruptedError(
                    f"{folder / MANIFEST_NAME} is missing but {folder} holds round files, so which rounds are "
                    f"complete is unknown. {CORRUPTION_ADVICE}"
                )
            raise HistoryError(f"{folder} holds no {MANIFEST_NAME}, so it holds no committed history. {MISSING_ADVICE}")
        return cls(folder, layout=ParamLayout.from_model(model), config=config)

    @property
    def is_empty(self) -> bool:
        """Whether no round is stored (from the manifest alone; reads no round file)."""
        return not self._manifest.rounds

    # ------------------------------------------------------------------ opening

    def _fresh_manifest(self, path: Path) -> Manifest:
        if any(self.directory.glob("round-*.bin")):
            raise HistoryCorruptedError(
                f"{path} is missing but {self.directory} holds round files, so which rounds are complete is "
                f"unknown. {CORRUPTION_ADVICE}"
            )
        manifest = Manifest(self.layout, recording_settings(self.config))
        save_manifest(path, manifest)
        return manifest

    def _check_compatible(self, manifest: Manifest) -> None:
        problem = manifest.layout.difference(self.layout)
        if problem:
            raise HistoryError(
                f"{self.directory} holds a history of another model ({problem}). Open it with the model it was "
                "recorded for, or use a new directory for this model."
            )
        wanted = recording_settings(self.config)
        if manifest.settings != wanted:
            raise HistoryError(
                f"{self.directory} was recorded with {manifest.settings}, but opened with {wanted}. A history cannot "
                "mix settings: open it with the same HistoryConfig, or use a new directory."
            )

    def _listed_files_present(self, listed: set[str]) -> bool:
        """False (logged) if a committed round file is missing: unlisted round files are then
        kept, since one may be the missing data under another name rather than a crash's orphan.
        Reading the affected round raises HistoryCorruptedError naming the missing file."""
        missing = sorted(name for name in listed if not (self.directory / name).exists())
        if missing:
            logger.error(
                "%s: committed round file(s) %s are missing; keeping unlisted round files. %s",
                self.directory,
                missing,
                CORRUPTION_ADVICE,
            )
        return not missing

    def _remove_strays(self, pattern: str, cause: str, *, keep: set[str] | None = None) -> None:
        for path in sorted(self.directory.glob(pattern)):
            if keep is None or path.name not in keep:
                logger.warning("removing %s, left over from %s", path, cause)
                path.unlink(missing_ok=True)

    # ------------------------------------------------------------------ recording

    def record_round(self, round: int, *, generator: torch.Generator | None = None) -> RoundRecorder:
        """Return the recorder of round ``round``.

        Use as ``with store.record_round(r) as rec: train_local(..., observer=rec)``.
        The round is committed when the ``with`` block exits normally; an existing round of
        the same number is then replaced (logged) and its weight reset to None.
        ``generator`` drives the ``random`` selector (default: seeded with the round number).
        """
        if round < 0:
            raise HistoryError(f"round must be >= 0, got {round}")
        path = self.directory / f"round-{round:06d}-{secrets.token_hex(4)}.bin{TMP_SUFFIX}"
        return RoundRecorder(
            round_number=round,
            path=path,
            layout=self.layout,
            config=self.config,
            digest=self._digest,
            generator=generator,
            commit=lambda tmp, info: self._commit_round(round, tmp, info),
        )

    def _commit_round(self, round: int, tmp: Path, info: RoundFileInfo) -> None:
        final = tmp.with_name(tmp.name.removesuffix(TMP_SUFFIX))
        commit_file(tmp, final)
        old = self._manifest.rounds.get(round)
        self._save(self._manifest.with_round(self._entry(round, final, info, weight=None)))
        if old is not None:
            logger.warning(
                "round %d recorded again: replaced %s (%d steps); set its weight again", round, old.file, old.steps
            )
            self._delete_files([old.file])

    def _entry(self, round: int, path: Path, info: RoundFileInfo, *, weight: float | None) -> RoundEntry:
        dense = info.steps * self.layout.numel * 4
        return RoundEntry(round, path.name, info.sha256, info.bytes, info.steps, dense, info.index_sha256, weight)

    def set_round_weight(self, round: int, weight: float) -> None:
        """Store w_k^r, the aggregation weight this client's update had in ``round``."""
        self._require_round(round)
        if not (math.isfinite(weight) and weight >= 0):
            raise HistoryError(f"round weight must be a finite number >= 0, got {weight}")
        entry = self._manifest.rounds[round]
        self._save(self._manifest.with_round(dataclasses.replace(entry, weight=float(weight))))

    # ------------------------------------------------------------------ queries

    def rounds(self) -> list[int]:
        """Return the committed round numbers, ascending."""
        return sorted(self._manifest.rounds)

    def affected_steps(self, sample_ids: IdsLike) -> list[StepRef]:
        """Find the stored steps whose batch contained any of ``sample_ids`` (by round, step)."""
        refs = []
        for plan in self._plan(_as_ids(sample_ids))[0]:
            with self._reader(plan.entry) as reader:
                refs += [StepRef(plan.entry.round, int(s), reader.index.ids_of(int(s))) for s in plan.steps]
        return refs

    def sum_deltas(
        self, sample_ids: IdsLike, *, weighted: bool = True, rounds: Collection[int] | None = None
    ) -> HistorySum:
        """Sum of the stored (pruned) deltas of every step that touched ``sample_ids``.

        ``weighted=True`` scales each step by its round's weight w_k^r, as the client's
        partial amnesiac correction C_k = -sum w_k^r Delta_{k,r,b} needs (ALGORITHMS.md; the
        sign is the caller's); rounds without a weight raise HistoryError. ``weighted=False``
        uses weight 1 (centralized amnesiac). ``rounds`` limits the sum to those rounds (an
        unlearning curve subtracts the history round by round). Every record is verified; on
        any error nothing is returned. The result is on the CPU, float32, one dense tensor per
        parameter.
        """
        query = _as_ids(sample_ids)
        plans, found = self._plan(query)
        if rounds is not None:
            plans = [p for p in plans if p.entry.round in rounds]
        weights = self._weights(plans, weighted)
        flat = {slot.name: torch.zeros(slot.numel, dtype=torch.float32) for slot in self._records.slots}
        for plan in plans:
            with self._reader(plan.entry) as reader:
                for step in plan.steps:
                    self._records.accumulate(flat, reader.read_record(int(step)), weight=weights[plan.entry.round])
        delta = {slot.name: flat[slot.name].view(slot.shape) for slot in self._records.slots}
        steps = sum(len(p.steps) for p in plans)
        return HistorySum(delta, steps, tuple(p.entry.round for p in plans), query[~found])

    def _weights(self, plans: list[_RoundPlan], weighted: bool) -> dict[int, float]:
        if not weighted:
            return {p.entry.round: 1.0 for p in plans}
        missing = [p.entry.round for p in plans if p.entry.weight is None]
        if missing:
            raise HistoryError(
                f"no aggregation weight stored for round(s) {missing}; call set_round_weight(round, w) once the "
                "round's aggregate is known, or pass weighted=False for unit weights"
            )
        return {p.entry.round: float(p.entry.weight or 0.0) for p in plans}

    def _plan(self, query: SampleIds) -> tuple[list[_RoundPlan], np.ndarray]:
        """Per round, the steps touching ``query`` (from the indexes only), and which ids were found."""
        plans, found = [], np.zeros(query.shape[0], dtype=bool)
        for round_number in self.rounds():
            entry = self._manifest.rounds[round_number]
            with self._reader(entry) as reader:
                steps = reader.index.steps_with(query)
                found |= np.isin(query, reader.index.ids)
            if steps.size:
                plans.append(_RoundPlan(entry, steps))
        return plans, found

    def _reader(self, entry: RoundEntry) -> RoundFileReader:
        return RoundFileReader(self.directory / entry.file, entry=entry, layout=self._records, digest=self._digest)

    def _require_round(self, round: int) -> None:
        if round not in self._manifest.rounds:
            stored = self.rounds()
            raise HistoryError(f"round {round} is not in the history of {self.directory}; stored rounds: {stored}")

    # ------------------------------------------------------------------ deletion

    def purge(self, sample_ids: IdsLike) -> int:
        """Remove every step whose batch contained any of ``sample_ids``; return how many.

        Affected round files are rewritten without those steps and committed with one manifest
        write, so a later request can never subtract them twice.
        """
        plans = self._plan(_as_ids(sample_ids))[0]
        if not plans:
            return 0
        manifest, written = self._manifest, []
        try:
            for plan in plans:
                entry = self._rewrite_without(plan.entry, set(plan.steps.tolist()))
                written.append(entry.file)
                manifest = manifest.with_round(entry)
        except BaseException:
            self._delete_files(written)
            raise
        self._save(manifest)
        self._delete_files([p.entry.file for p in plans])
        removed = sum(len(p.steps) for p in plans)
        logger.info("purged %d step(s) from round(s) %s", removed, [p.entry.round for p in plans])
        return removed

    def _rewrite_without(self, entry: RoundEntry, drop: set[int]) -> RoundEntry:
        final = self.directory / f"round-{entry.round:06d}-{secrets.token_hex(4)}.bin"
        tmp = final.with_name(final.name + TMP_SUFFIX)
        writer = RoundFileWriter(tmp, round_number=entry.round, digest=self._digest)
        try:
            with self._reader(entry) as reader:
                for step in (s for s in range(entry.steps) if s not in drop):
                    record = reader.read_record(step)
                    RECORD_HEADER.pack_into(record.data, 0, RECORD_MAGIC, writer.steps)
                    writer.append(record, reader.index.ids_of(step))
            info = writer.finish()
        except BaseException:
            writer.abort()
            raise
        commit_file(writer.path, final)
        return self._entry(entry.round, final, info, weight=entry.weight)

    def purge_all(self) -> int:
        """Delete every round (client-level deletion); return the number of steps removed."""
        removed = sum(e.steps for e in self._manifest.rounds.values())
        files = [e.file for e in self._manifest.rounds.values()]
        self._save(self._manifest.without_rounds(set(self._manifest.rounds)))
        self._delete_files(files)
        return removed

    def discard_round(self, round: int) -> int:
        """Forget one round entirely (e.g. a corrupted one); return its number of steps."""
        self._require_round(round)
        entry = self._manifest.rounds[round]
        self._save(self._manifest.without_rounds({round}))
        self._delete_files([entry.file])
        logger.warning("discarded round %d of %s (%d steps)", round, self.directory, entry.steps)
        return entry.steps

    def _save(self, manifest: Manifest) -> None:
        save_manifest(self.directory / MANIFEST_NAME, manifest)
        self._manifest = manifest

    def _delete_files(self, names: list[str]) -> None:
        for name in names:
            (self.directory / name).unlink(missing_ok=True)
        fsync_dir(self.directory)

    # ------------------------------------------------------------------ accounting

    def usage(self) -> StorageUsage:
        """Bytes on disk (round files and manifest) against dense float32 amnesiac storage."""
        rows = tuple(
            RoundUsage(e.round, e.file, e.bytes, e.steps, e.dense_bytes, e.weight)
            for e in (self._manifest.rounds[r] for r in self.rounds())
        )
        manifest_bytes = (self.directory / MANIFEST_NAME).stat().st_size
        return StorageUsage(
            disk_bytes=manifest_bytes + sum(r.bytes for r in rows),
            dense_bytes=sum(r.dense_bytes for r in rows),
            manifest_bytes=manifest_bytes,
            rounds=rows,
        )

    def verify(self) -> None:
        """Hash every round file completely; raise HistoryCorruptedError on the first mismatch."""
        for entry in (self._manifest.rounds[r] for r in self.rounds()):
            with self._reader(entry):  # size, header and index checks
                pass
            actual = file_sha256(self.directory / entry.file)
            if actual != entry.sha256:
                raise HistoryCorruptedError(
                    f"history file {self.directory / entry.file} (round {entry.round}) has sha256 {actual}, "
                    f"expected {entry.sha256}. {CORRUPTION_ADVICE}"
                )


def _as_ids(sample_ids: IdsLike) -> SampleIds:
    """Sorted unique int64 ids from a list, numpy array or tensor."""
    arr = sample_ids.detach().cpu().numpy() if isinstance(sample_ids, torch.Tensor) else np.asarray(sample_ids)
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise HistoryError(f"sample_ids must be integers, got dtype {arr.dtype}")
    return np.unique(arr.astype(np.int64).reshape(-1))
