"""One round's binary history file: streamed step records, then a sample-id index and a trailer.

Layout (little endian)::

    header   56 B   b"FUHIST01", format version u32, flags u32, round i64,
                    sha256 of (parameter layout + recording settings)
    record   per step, RecordLayout.record_bytes each (see layout.py), appended while training
    index    b"INDX", steps u32, then offsets u64[T], id counts u64[T],
             sha256 of each record [T x 32 B], sample ids int64[sum of counts]
    trailer  56 B   index offset u64, index bytes u64, index sha256, b"FUHIEND1"

Overhead beyond the formula of ALGORITHMS.md (kept entries x (index + value bytes) + 8 B per
sample id) is exactly ``FILE_OVERHEAD_BYTES`` per file plus ``STEP_OVERHEAD_BYTES`` per step.
The manifest holds the file's sha256, its size and the index's sha256, so the index can be
trusted without hashing the whole file, and each record read is checked against its own
sha256 from the index: lookups read only the index, sums read only the affected records.
"""

from __future__ import annotations

import hashlib
import io
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import numpy as np

from fedunlearn.errors import HistoryCorruptedError
from fedunlearn.history.layout import RECORD_HEADER, RECORD_MAGIC, RecordLayout
from fedunlearn.history.manifest import CORRUPTION_ADVICE, RoundEntry
from fedunlearn.types import SampleIds

FILE_MAGIC = b"FUHIST01"
FORMAT_VERSION = 1
HEADER = struct.Struct("<8sIIq32s")
INDEX_HEADER = struct.Struct("<4sI")
INDEX_MAGIC = b"INDX"
INDEX_ENTRY_BYTES = 8 + 8 + 32
TRAILER = struct.Struct("<QQ32s8s")
TRAILER_MAGIC = b"FUHIEND1"
#: Fixed bytes per round file: header, index header, trailer.
FILE_OVERHEAD_BYTES = HEADER.size + INDEX_HEADER.size + TRAILER.size
#: Fixed bytes per step: record header and index entry (offset, id count, sha256).
STEP_OVERHEAD_BYTES = RECORD_HEADER.size + INDEX_ENTRY_BYTES
_WRITE_BUFFER = 1 << 20


@dataclass(frozen=True)
class RoundFileInfo:
    """What a finished round file holds, for its manifest entry."""

    sha256: str
    bytes: int
    steps: int
    index_sha256: str


class RoundFileWriter:
    """Streams step records into a temp file; ``finish`` appends index and trailer and fsyncs.

    Only the current record is in memory, plus the round's sample ids (8 B per sample per
    epoch) for the index.
    """

    def __init__(self, path: Path, *, round_number: int, digest: bytes) -> None:
        self.path = path
        self._file = open(path, "wb", buffering=_WRITE_BUFFER)  # noqa: SIM115 - closed in finish/abort
        self._sha = hashlib.sha256()
        self._position = 0
        self._offsets: list[int] = []
        self._digests: list[bytes] = []
        self._ids: list[np.ndarray] = []
        self._write(HEADER.pack(FILE_MAGIC, FORMAT_VERSION, 0, round_number, digest))

    @property
    def steps(self) -> int:
        """Records appended so far."""
        return len(self._offsets)

    def _write(self, data: bytes | memoryview) -> None:
        view = memoryview(data).cast("B")
        self._file.write(view)
        self._sha.update(view)
        self._position += view.nbytes

    def append(self, record: np.ndarray, sample_ids: SampleIds) -> None:
        """Append one complete record (header included) and remember its sample ids."""
        self._offsets.append(self._position)
        self._digests.append(hashlib.sha256(record.data).digest())
        self._ids.append(np.array(sample_ids, dtype=np.int64, copy=True).reshape(-1))
        self._write(record.data)

    def finish(self) -> RoundFileInfo:
        """Write index and trailer, flush, fsync and close; the file is then complete."""
        index = _encode_index(self._offsets, self._ids, self._digests)
        index_offset, index_sha = self._position, hashlib.sha256(index).digest()
        self._write(index)
        self._write(TRAILER.pack(index_offset, len(index), index_sha, TRAILER_MAGIC))
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        return RoundFileInfo(self._sha.hexdigest(), self._position, self.steps, index_sha.hex())

    def abort(self) -> None:
        """Close and delete the temp file."""
        self._file.close()
        self.path.unlink(missing_ok=True)


def _encode_index(offsets: list[int], ids: list[np.ndarray], digests: list[bytes]) -> bytes:
    counts = np.array([len(a) for a in ids], dtype="<u8")
    all_ids = np.concatenate(ids).astype("<i8") if ids else np.zeros(0, dtype="<i8")
    return b"".join(
        [
            INDEX_HEADER.pack(INDEX_MAGIC, len(offsets)),
            np.asarray(offsets, dtype="<u8").tobytes(),
            counts.tobytes(),
            b"".join(digests),
            all_ids.tobytes(),
        ]
    )


@dataclass(frozen=True)
class RoundIndex:
    """A round file's index: per step its byte offset, record sha256 and sample ids."""

    offsets: np.ndarray  # uint64 [T]
    digests: np.ndarray  # uint8 [T, 32]
    starts: np.ndarray  # int64 [T + 1], step t's ids are ids[starts[t]:starts[t + 1]]
    ids: np.ndarray  # int64 [sum of counts]
    step_of_id: np.ndarray  # int64, the step each entry of ``ids`` belongs to

    @property
    def steps(self) -> int:
        """Number of steps in the round."""
        return int(self.offsets.shape[0])

    def ids_of(self, step: int) -> SampleIds:
        """Return the sample ids of one step's batch."""
        return self.ids[self.starts[step] : self.starts[step + 1]].copy()

    def steps_with(self, query: SampleIds) -> np.ndarray:
        """Sorted step numbers whose batch holds any id of ``query`` (vectorised ``isin``)."""
        return np.unique(self.step_of_id[np.isin(self.ids, query)])


def _decode_index(data: bytes, where: str) -> RoundIndex:
    magic, steps = INDEX_HEADER.unpack_from(data)
    body = len(data) - INDEX_HEADER.size - steps * INDEX_ENTRY_BYTES
    if magic != INDEX_MAGIC or body < 0 or body % 8:
        raise HistoryCorruptedError(f"{where}: the step index is malformed. {CORRUPTION_ADVICE}")
    cursor = INDEX_HEADER.size
    offsets = np.frombuffer(data, dtype="<u8", count=steps, offset=cursor)
    counts = np.frombuffer(data, dtype="<u8", count=steps, offset=cursor + 8 * steps).astype(np.int64)
    digests = np.frombuffer(data, dtype=np.uint8, count=32 * steps, offset=cursor + 16 * steps).reshape(steps, 32)
    ids = np.frombuffer(data, dtype="<i8", offset=cursor + 48 * steps).astype(np.int64)
    if int(counts.sum()) != ids.shape[0]:
        raise HistoryCorruptedError(f"{where}: the step index is malformed (id counts differ). {CORRUPTION_ADVICE}")
    starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return RoundIndex(offsets, digests, starts, ids, np.repeat(np.arange(steps, dtype=np.int64), counts))


class RoundFileReader:
    """Reads a committed round file, checking it against its manifest entry.

    Opening checks the size, header and index (its sha256 against the manifest); each
    ``read_record`` checks the record's sha256 against the index. Any mismatch raises
    HistoryCorruptedError naming the file, the expected and actual values, and what to do.
    """

    def __init__(self, path: Path, *, entry: RoundEntry, layout: RecordLayout, digest: bytes) -> None:
        self.path, self._entry, self._layout = path, entry, layout
        self._file = _open_checked(path, entry)
        try:
            self._check_header(digest)
            self.index = self._read_index()
        except BaseException:
            self._file.close()
            raise
        self._buffer = np.empty(layout.record_bytes, dtype=np.uint8)

    def __enter__(self) -> RoundFileReader:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._file.close()

    def _corrupted(self, what: str) -> HistoryCorruptedError:
        where = f"history file {self.path} (round {self._entry.round})"
        return HistoryCorruptedError(f"{where}: {what}. {CORRUPTION_ADVICE}")

    def _check_header(self, digest: bytes) -> None:
        magic, version, _flags, round_number, file_digest = HEADER.unpack(self._file.read(HEADER.size))
        if magic != FILE_MAGIC or version != FORMAT_VERSION:
            expected = f"{FILE_MAGIC!r}/{FORMAT_VERSION}"
            raise self._corrupted(f"bad header magic/version {magic!r}/{version}, expected {expected}")
        if round_number != self._entry.round or file_digest != digest:
            raise self._corrupted(
                f"the header says round {round_number} with layout digest {file_digest.hex()[:16]}..., expected "
                f"round {self._entry.round} with {digest.hex()[:16]}... (a file from another round or store)"
            )

    def _read_index(self) -> RoundIndex:
        self._file.seek(self._entry.bytes - TRAILER.size)
        offset, nbytes, _sha, magic = TRAILER.unpack(self._file.read(TRAILER.size))
        if magic != TRAILER_MAGIC or offset + nbytes + TRAILER.size != self._entry.bytes:
            raise self._corrupted("the trailer is damaged (bad magic or index position)")
        self._file.seek(offset)
        data = self._file.read(nbytes)
        actual = hashlib.sha256(data).hexdigest()
        if actual != self._entry.index_sha256:
            raise self._corrupted(f"the step index has sha256 {actual}, expected {self._entry.index_sha256}")
        index = _decode_index(data, str(self.path))
        if index.steps != self._entry.steps:
            raise self._corrupted(f"the index lists {index.steps} steps, the manifest {self._entry.steps}")
        return index

    def read_record(self, step: int) -> np.ndarray:
        """Record ``step`` (header included) in a reused buffer, verified against its sha256."""
        self._file.seek(int(self.index.offsets[step]))
        got = self._file.readinto(self._buffer.data)
        actual = hashlib.sha256(self._buffer[:got].data).digest()
        expected = self.index.digests[step].tobytes()
        if got != self._layout.record_bytes or actual != expected:
            raise self._corrupted(f"step {step} has sha256 {actual.hex()}, expected {expected.hex()} ({got} B read)")
        magic, number = RECORD_HEADER.unpack_from(self._buffer.data)
        if magic != RECORD_MAGIC or number != step:
            raise self._corrupted(f"record {step} has header {magic!r}/{number}")
        return self._buffer


def _open_checked(path: Path, entry: RoundEntry) -> io.BufferedReader:
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        where = f"history file {path} (round {entry.round})"
        raise HistoryCorruptedError(f"{where} is missing. {CORRUPTION_ADVICE}") from None
    if size != entry.bytes:
        raise HistoryCorruptedError(
            f"history file {path} (round {entry.round}) has {size} bytes, the manifest expects {entry.bytes} "
            f"(truncated or appended to). {CORRUPTION_ADVICE}"
        )
    return open(path, "rb")  # noqa: SIM115 - closed by RoundFileReader


def file_sha256(path: Path) -> str:
    """sha256 of a whole file, read in 1 MiB chunks."""
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            sha.update(chunk)
    return sha.hexdigest()
