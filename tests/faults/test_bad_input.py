"""Bad input, property-based (hypothesis): every bad input gets a clear FedUnlearnError that
names the field or value (or the damaged file), and the stores are byte-for-byte unchanged.

Covers deletion requests (Python API, stored records, the owning client's checks, the node
CLI), run configs, and damaged history, request, receipt and forgotten-id files. Each
property counts its inputs in ``TALLY`` (printed, and appended as JSON to the file named by
``FEDUNLEARN_FAULT_FIGURES`` if set).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers.receipts import sample_receipt
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from torch import nn

from faults.harness import tree_bytes
from fedunlearn import deletion
from fedunlearn.config import FederationConfig, HistoryConfig, TrainConfig, _run_config_keys
from fedunlearn.data import IndexedDataset
from fedunlearn.deletion import DeletionQueue, DeletionReceipt, DeletionRequest, ids_digest
from fedunlearn.errors import ConfigError, DeletionRequestError, FedUnlearnError
from fedunlearn.history import HistoryStore
from fedunlearn.node_cli import forget as forget_cli
from fedunlearn.site import ClientSite
from fedunlearn.site_unlearning import fast_correction, resolve_request
from fedunlearn.training import train_local

pytestmark = pytest.mark.faults

TALLY: Counter[str] = Counter()
SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
INT64_MAX = int(np.iinfo(np.int64).max)


@pytest.fixture(scope="module", autouse=True)
def _report_tally() -> Iterator[None]:
    yield
    tried, clear = TALLY["tried"], TALLY["clear"]
    print(
        f"\nbad inputs tried: {tried}, clear errors: {clear}; by kind: "
        f"{ {k.removeprefix('tried:'): v for k, v in TALLY.items() if k.startswith('tried:')} }"
    )
    if os.environ.get("FEDUNLEARN_FAULT_FIGURES"):
        with open(os.environ["FEDUNLEARN_FAULT_FIGURES"], "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"test": "bad_input", **TALLY}) + "\n")


def expect_clear_error(
    kind: str, action: Callable[[], object], error: type[FedUnlearnError], *names: str
) -> FedUnlearnError:
    """Run ``action``; it must raise ``error`` whose message contains one of ``names``."""
    TALLY["tried"] += 1
    TALLY[f"tried:{kind}"] += 1
    with pytest.raises(error) as caught:
        action()
    message = str(caught.value)
    assert any(n in message for n in names), f"{message!r} names none of {names}"
    TALLY["clear"] += 1
    return caught.value


# ======================================================================= deletion requests
GOOD_IDS = st.lists(st.integers(0, 10_000), max_size=8)
BAD_ID = st.one_of(
    st.integers(max_value=-1),
    st.integers(min_value=INT64_MAX + 1),
    st.floats(allow_nan=True),
    st.text(max_size=4),
    st.none(),
    st.booleans(),
    st.lists(st.integers(), max_size=2),
)
NOT_A_LIST = st.one_of(
    st.integers(), st.floats(), st.none(), st.text(max_size=5), st.dictionaries(st.text(), st.integers())
)
BAD_KIND = st.one_of(st.text(max_size=8).filter(lambda t: t not in deletion.DELETION_KINDS), st.integers(), st.none())
BAD_LABEL = st.one_of(st.integers(max_value=-1), st.floats(), st.text(max_size=3), st.none(), st.booleans())
BAD_REQUEST_ID = st.one_of(
    st.text(min_size=1, max_size=20).filter(lambda t: not deletion.valid_request_id(t)),
    st.just(""),
    st.text(alphabet="ab", min_size=129, max_size=140),
    st.integers(),
)


@SETTINGS
@given(ids=GOOD_IDS, bad=BAD_ID, position=st.integers(0, 8))
def test_sample_ids_with_a_bad_entry_are_refused_naming_it(ids: list[int], bad: object, position: int) -> None:
    ids.insert(min(position, len(ids)), bad)  # type: ignore[arg-type]
    expect_clear_error(
        "request: bad sample id",
        lambda: DeletionRequest.new(kind="sample", sample_ids=ids),
        DeletionRequestError,
        "sample ids",
    )


@SETTINGS
@given(value=NOT_A_LIST)
def test_sample_ids_that_are_not_a_list_are_refused(value: object) -> None:
    expect_clear_error(
        "request: ids not a list",
        lambda: DeletionRequest.new(kind="sample", sample_ids=value),  # type: ignore[arg-type]
        DeletionRequestError,
        "sample ids",
    )


@SETTINGS
@given(data=st.data())
def test_malformed_kind_label_or_request_id_is_refused_naming_the_field(data: st.DataObject) -> None:
    case = data.draw(st.sampled_from(["kind", "class label", "stray label", "stray ids", "empty", "request id"]))
    draw = {
        "kind": lambda: ({"kind": data.draw(BAD_KIND)}, "kind"),
        "class label": lambda: ({"kind": "class", "label": data.draw(BAD_LABEL)}, "label"),
        "stray label": lambda: data.draw(
            st.sampled_from(
                [
                    ({"kind": "sample", "label": 3, "sample_ids": [1]}, "label"),
                    ({"kind": "client", "label": 3}, "label"),
                ]
            )
        ),
        "stray ids": lambda: (
            {
                "kind": data.draw(st.sampled_from(["class", "client"])),
                "label": 1,
                "sample_ids": data.draw(st.lists(st.integers(0, 99), min_size=1, max_size=3)),
            },
            "sample ids",
        ),
        "empty": lambda: ({"kind": "sample", "sample_ids": []}, "at least one sample id"),
        "request id": lambda: ({"kind": "client", "request_id": data.draw(BAD_REQUEST_ID.filter(bool))}, "request id"),
    }[case]
    kwargs, name = draw()
    expect_clear_error(f"request: {case}", lambda: DeletionRequest.new(**kwargs), DeletionRequestError, name)


@settings(max_examples=25, deadline=None)
@given(extra=st.integers(1, 500))
def test_enormous_id_lists_are_refused_before_they_are_copied(extra: int) -> None:
    limit = 1000
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(deletion, "MAX_REQUEST_IDS", limit)
        expect_clear_error(
            "request: enormous list",
            lambda: DeletionRequest.new(kind="sample", sample_ids=range(limit + extra)),
            DeletionRequestError,
            "at most",
        )


def test_an_endless_id_stream_is_refused_at_the_real_limit() -> None:
    expect_clear_error(
        "request: endless stream",
        lambda: DeletionRequest.new(kind="sample", sample_ids=iter(lambda: 7, None)),
        DeletionRequestError,
        "at most",
    )


@SETTINGS
@given(ids=st.lists(st.integers(0, 50), min_size=1, max_size=30))
def test_duplicate_ids_are_merged_and_hashed_like_the_unique_ids(ids: list[int]) -> None:
    request = DeletionRequest.new(kind="sample", sample_ids=ids)
    assert list(request.sample_ids) == sorted(set(ids))
    assert ids_digest(ids) == ids_digest(sorted(set(ids)))


FIELD_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "request_id": BAD_REQUEST_ID,
    "kind": BAD_KIND,
    "sample_ids": st.one_of(st.integers(), st.text(max_size=3), st.lists(BAD_ID, min_size=1, max_size=3)),
    "label": st.one_of(st.text(max_size=3), st.floats()),
    "created_at": st.one_of(st.text(max_size=3), st.none(), st.just(math.inf)),
    "status": st.text(max_size=6).filter(lambda t: t not in ("pending", "served")),
    "attempts": st.one_of(st.integers(max_value=-1), st.text(max_size=3), st.floats()),
    "last_error": st.one_of(st.integers(), st.lists(st.integers(), max_size=2)),
    "served_at": st.one_of(st.text(min_size=1, max_size=3), st.just(math.nan)),
}
FIELD_NAMES = {
    "request_id": ("request id",),
    "sample_ids": ("sample ids", "sample_ids"),
    "kind": ("kind",),
    "label": ("label",),
    "created_at": ("created_at",),
    "status": ("status",),
    "attempts": ("attempts",),
    "last_error": ("last_error",),
    "served_at": ("served_at",),
}


@SETTINGS
@given(data=st.data())
def test_stored_request_records_with_a_bad_field_are_refused_naming_the_field(data: st.DataObject) -> None:
    base = DeletionRequest.new(kind="sample", sample_ids=[1, 2, 3], request_id="r1").to_json()
    name = data.draw(st.sampled_from(sorted(FIELD_VALUES)))
    value = data.draw(FIELD_VALUES[name])
    if name == "label":
        base["kind"], base["sample_ids"] = "class", []
    payload = {**base, name: value}
    expect_clear_error(
        f"record: bad {name}", lambda: DeletionRequest.from_json(payload), DeletionRequestError, *FIELD_NAMES[name]
    )


@SETTINGS
@given(data=st.data())
def test_stored_request_records_with_unknown_or_missing_fields_are_refused(data: st.DataObject) -> None:
    payload = DeletionRequest.new(kind="client", request_id="r1").to_json()
    if data.draw(st.booleans()):
        key = data.draw(st.text(min_size=1, max_size=8).filter(lambda k: k not in payload))
        payload[key] = data.draw(st.integers())
        names: tuple[str, ...] = (repr(key),)
    else:
        key = data.draw(st.sampled_from(["request_id", "kind"]))
        del payload[key]
        names = (repr(key),)
    expect_clear_error(
        "record: unknown/missing field", lambda: DeletionRequest.from_json(payload), DeletionRequestError, *names
    )


@SETTINGS
@given(request_id=BAD_REQUEST_ID.filter(lambda v: isinstance(v, str)))
def test_the_queue_refuses_unsafe_request_ids_and_writes_nothing(request_id: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        queue = DeletionQueue(folder)
        queue.submit(DeletionRequest.new(kind="client", request_id="ok"))
        before = tree_bytes(Path(folder))
        expect_clear_error(
            "queue: unsafe request id", lambda: queue.get(request_id), DeletionRequestError, "request id"
        )
        expect_clear_error(
            "queue: duplicate request",
            lambda: queue.submit(DeletionRequest.new(kind="client", request_id="ok")),
            DeletionRequestError,
            "already exists",
        )
        assert tree_bytes(Path(folder)) == before


# ======================================================================= the owning client
@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> tuple[ClientSite, ClientSite]:
    root = tmp_path_factory.mktemp("sites")
    config = FederationConfig.from_run_config(
        {
            "dataset": "digits",
            "model": "mlp",
            "num-clients": 2,
            "samples-per-client": 100,
            "test-samples": 50,
            "state-root": str(root),
            "data-root": str(root / "no-data"),
            "batch-size": 20,
            "client-threads": 1,
        }
    )
    opened = [
        ClientSite.open(config=config, partition_id=p, state_dir=root / f"client-{p}", lineage="run") for p in (0, 1)
    ]
    site = opened[0]
    outcome = site.train_round(site.build_model().state_dict(), server_round=1)
    site.record_round_weights([1], [0.5])
    served = DeletionRequest.new(kind="sample", sample_ids=site.dataset.ids()[:3].tolist(), request_id="served")
    site.queue.submit(served)
    receipt = DeletionReceipt("served", "sample", 3, ids_digest(served.sample_ids), "a", "b", 1, "partial_amnesiac")
    site.queue.mark_served("served", resolved_ids=np.asarray(served.sample_ids), receipt=receipt)
    site.train_round(outcome.state, server_round=2)
    return opened[0], opened[1]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_the_owning_client_refuses_foreign_unknown_or_already_deleted_ids(
    sites: tuple[ClientSite, ClientSite],
    data: st.DataObject,
) -> None:
    mine, other = sites
    own = mine.retained().ids().tolist()
    case = data.draw(st.sampled_from(["another client's", "unknown", "already deleted"]))
    pool = {
        "another client's": other.dataset.ids().tolist(),
        "unknown": list(range(10**9, 10**9 + 50)),
        "already deleted": mine.forgotten_ids().tolist(),
    }[case]
    bad = data.draw(st.lists(st.sampled_from(pool), min_size=1, max_size=5, unique=True))
    good = data.draw(st.lists(st.sampled_from(own), max_size=5, unique=True))
    request = DeletionRequest.new(kind="sample", sample_ids=bad + good, request_id="probe")
    before = tree_bytes(mine.state_dir)
    error = expect_clear_error(
        f"client: {case} ids", lambda: resolve_request(mine, request), DeletionRequestError, *map(str, bad)
    )
    assert "not in this dataset" in str(error) or "already deleted" in str(error)
    state = mine.build_model().state_dict()  # the server's train.forget path refuses it the same way
    expect_clear_error(
        f"client: {case} ids (phase)",
        lambda: fast_correction(mine, state, request, outer_step=0, remain_fisher=None),
        DeletionRequestError,
        *map(str, bad),
    )
    assert tree_bytes(mine.state_dir) == before


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_the_node_cli_refuses_bad_id_files_and_writes_nothing(
    sites: tuple[ClientSite, ClientSite], data: st.DataObject
) -> None:
    mine, other = sites
    own = mine.retained().ids().tolist()
    bad_line = data.draw(
        st.one_of(
            st.sampled_from(other.dataset.ids().tolist()).map(str),
            st.integers(max_value=-1).map(str),
            st.integers(min_value=INT64_MAX + 1).map(str),
            st.sampled_from(mine.forgotten_ids().tolist()).map(str),
            st.text(alphabet="xyz.,;e ", min_size=1, max_size=6).filter(lambda t: t.strip() and "#" not in t),
            st.sampled_from(own).map(lambda i: f"{i}\n{i}"),  # a duplicate
        )
    )
    lines = [str(i) for i in data.draw(st.lists(st.sampled_from(own), max_size=4, unique=True))]
    lines.insert(data.draw(st.integers(0, len(lines))), bad_line)
    with _copy(mine.state_dir) as state_dir:
        before = tree_bytes(state_dir)
        stderr = io.StringIO()
        with contextlib.redirect_stderr(stderr):
            code = forget_cli.main(
                ["--state-dir", str(state_dir), "--samples", "-"], stdin=io.StringIO("\n".join(lines))
            )
        TALLY["tried"] += 1
        TALLY["tried:node cli: bad id file"] += 1
        assert code == forget_cli.EXIT_REFUSED, stderr.getvalue()
        assert "refused, nothing was written" in stderr.getvalue() and "line " in stderr.getvalue()
        assert tree_bytes(state_dir) == before
        TALLY["clear"] += 1


@contextlib.contextmanager
def _copy(folder: Path) -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / "state"
        shutil.copytree(folder, target, ignore=shutil.ignore_patterns("history"))
        yield target


# ======================================================================= run configs
KEYS = _run_config_keys(FederationConfig)
#: Run-config keys -> values outside their documented range (fedunlearn/config.py).
OUT_OF_RANGE: dict[str, st.SearchStrategy[Any]] = {
    **{
        k: st.integers(max_value=0)
        for k in (
            "num-server-rounds",
            "num-clients",
            "classes-per-client",
            "samples-per-client",
            "test-samples",
            "local-epochs",
            "batch-size",
            "unlearn-epochs",
            "unlearn-max-steps",
            "unlearn-batch-size",
            "sfr-iters",
            "sfr-forget-freq",
            "unlearn-outer-steps",
        )
    },
    **{
        k: st.integers(max_value=-1)
        for k in (
            "client-threads",
            "phase-retries",
            "unlearn-finetune-epochs",
            "unlearn-remain-steps",
            "backdoor-target",
        )
    },
    **{
        k: st.one_of(st.floats(max_value=0.0), st.just(math.nan), st.just(math.inf))
        for k in (
            "round-timeout",
            "dirichlet-alpha",
            "lr",
            "unlearn-lr",
            "sfr-lr",
            "sfr-temperature",
            "sfr-clip-norm",
            "sfr-saliency-gamma",
            "unlearn-apply-scale",
        )
    },
    **{
        k: st.one_of(st.floats(max_value=-1e-9), st.just(math.nan), st.just(math.inf))
        for k in ("weight-decay", "sfr-forget-scale", "sfr-weight-decay")
    },
    **{
        k: st.one_of(st.floats(max_value=0.0), st.floats(min_value=1.0 + 1e-9), st.just(math.nan))
        for k in ("fraction-train", "keep-ratio", "unlearn-select-ratio", "unlearn-alpha", "backdoor-fraction")
    },
    **{
        k: st.one_of(st.floats(max_value=-1e-9), st.floats(min_value=1.0 + 1e-9), st.just(math.nan))
        for k in (
            "fraction-evaluate",
            "momentum",
            "sfr-momentum",
            "unlearn-remain-fraction",
            "unlearn-max-ta-drop",
            "unlearn-target-fa",
        )
    },
    **{
        k: st.text(max_size=6).filter(lambda t, k=k: t not in _allowed(k))
        for k in ("partition", "history-selector", "history-dtype", "unlearn-selector")
    },
    "device": st.text(max_size=6).filter(lambda t: t not in ("auto", "cpu") and not t.startswith("cuda")),
    "backdoor-trigger-size": st.one_of(st.integers(max_value=0), st.integers(min_value=15)),
    "backdoor-client": st.one_of(st.integers(max_value=-1), st.integers(min_value=5, max_value=10**6)),
    "deletion-schedule": st.text(alphabet="0123456789:;abcsmplet.-", min_size=1, max_size=12).filter(
        lambda t: _schedule_is_bad(t)
    ),
    "dataset": st.just(""),
    "model": st.just(""),
    "unlearn-method": st.just(""),
}
WRONG_TYPE = st.one_of(
    st.lists(st.integers(), min_size=1, max_size=2),
    st.dictionaries(st.text(max_size=2), st.integers(), min_size=1, max_size=1),
)
NUMERIC_KEYS = sorted(k for k, (_, hint) in KEYS.items() if hint in (int, float, bool, int | None, float | None))


def _allowed(key: str) -> tuple[str, ...]:
    from fedunlearn import config

    return {
        "partition": config.PARTITION_KINDS,
        "history-selector": config.SELECTOR_NAMES,
        "unlearn-selector": config.SELECTOR_NAMES,
        "history-dtype": config.VALUE_DTYPES,
    }.get(key, ("auto", "cpu"))


def _schedule_is_bad(text: str) -> bool:
    try:
        FederationConfig.from_run_config({"deletion-schedule": text, "num-server-rounds": 10**6})
    except ConfigError:
        return True
    return False


def _names(key: str) -> tuple[str, ...]:
    path, _ = KEYS[key]
    field = path[-1]
    return key, field, field.replace("_", " ")


def test_every_validated_run_config_key_has_bad_values() -> None:
    # unvalidated names (registries check them when used): data-root, state-root, out-dir, sfr-saliency
    unchecked = {
        "data-root",
        "state-root",
        "out-dir",
        "sfr-saliency",
        "seed",
        "download",
        "record-history",
        "history-record-full",
        "retrain-mode",
    }
    assert set(KEYS) - set(OUT_OF_RANGE) == unchecked


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_out_of_range_run_config_values_are_refused_naming_the_key(data: st.DataObject) -> None:
    key = data.draw(st.sampled_from(sorted(OUT_OF_RANGE)))
    value = data.draw(OUT_OF_RANGE[key])
    expect_clear_error(
        f"run config: out of range {key}",
        lambda: FederationConfig.from_run_config({key: value}),
        ConfigError,
        *_names(key),
    )


@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_wrongly_typed_run_config_values_are_refused_naming_the_key(data: st.DataObject) -> None:
    key = data.draw(st.sampled_from(NUMERIC_KEYS))
    value = data.draw(st.one_of(WRONG_TYPE, st.text(alphabet="abcxyz", min_size=1, max_size=5)))
    expect_clear_error(
        f"run config: wrong type {key}",
        lambda: FederationConfig.from_run_config({key: value}),
        ConfigError,
        *_names(key),
    )


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_several_bad_values_are_all_named_in_one_error(data: st.DataObject) -> None:
    keys = data.draw(st.lists(st.sampled_from(sorted(OUT_OF_RANGE)), min_size=2, max_size=4, unique=True))
    assume("backdoor-client" not in keys or "num-clients" not in keys)
    unknown = data.draw(st.text(alphabet="qwz-", min_size=3, max_size=8).filter(lambda k: k not in KEYS))
    values = {k: data.draw(OUT_OF_RANGE[k]) for k in keys} | {unknown: 1}
    error = expect_clear_error(
        "run config: several bad values", lambda: FederationConfig.from_run_config(values), ConfigError, unknown
    )
    for key in keys:
        assert any(n in str(error) for n in _names(key)), (key, str(error))


# ======================================================================= damaged files
TRAIN = TrainConfig(batch_size=8, lr=0.1, device="cpu")


@pytest.fixture(scope="module")
def pristine_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    folder = tmp_path_factory.mktemp("history")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    g = torch.Generator().manual_seed(0)
    data = IndexedDataset(torch.randn(24, 4, generator=g), torch.randint(0, 3, (24,), generator=g), torch.arange(24), 3)
    store = HistoryStore.for_model(folder, model=model, config=HistoryConfig(keep_ratio=0.5))
    for r in (1, 2):
        with store.record_round(r) as recorder:
            train_local(model, data, config=TRAIN, seed=r, observer=recorder)
        store.set_round_weight(r, 0.5)
    return folder, _read_store(folder)


def _read_store(folder: Path) -> dict[str, torch.Tensor]:
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    store = HistoryStore.for_model(folder, model=model, config=HistoryConfig(keep_ratio=0.5))
    store.verify()
    return store.sum_deltas(np.arange(24)).delta


MUTATIONS = st.sampled_from(["truncate", "flip", "append", "delete", "garbage", "empty", "rename"])


def _mutate(path: Path, how: str, data: st.DataObject) -> None:
    content = path.read_bytes()
    if how == "truncate":
        path.write_bytes(content[: data.draw(st.integers(0, len(content) - 1))])
    elif how == "flip":
        at = data.draw(st.integers(0, len(content) - 1))
        mask = data.draw(st.integers(1, 255))
        path.write_bytes(content[:at] + bytes([content[at] ^ mask]) + content[at + 1 :])
    elif how == "append":
        path.write_bytes(content + data.draw(st.binary(min_size=1, max_size=16)))
    elif how == "delete":
        path.unlink()
    elif how == "garbage":
        path.write_bytes(data.draw(st.binary(min_size=1, max_size=64)))
    elif how == "empty":
        path.write_bytes(b"")
    else:
        path.rename(path.with_name(path.name.replace("round-", "round-9").replace("manifest", "manifest-old")))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_damaged_history_files_raise_naming_the_file_and_change_nothing(
    pristine_store: tuple[Path, dict[str, torch.Tensor]],
    data: st.DataObject,
) -> None:
    source, expected = pristine_store
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "history"
        shutil.copytree(source, folder)
        files = sorted(p.name for p in folder.iterdir())
        name, how = data.draw(st.sampled_from(files)), data.draw(MUTATIONS)
        original = (folder / name).read_bytes()
        _mutate(folder / name, how, data)
        assume(how in ("delete", "rename") or (folder / name).read_bytes() != original)
        before = tree_bytes(folder)
        TALLY["tried"] += 1
        TALLY[f"tried:history file: {how}"] += 1
        try:
            delta = _read_store(folder)
        except FedUnlearnError as err:
            message = str(err)
            assert name in message or str(folder) in message, message
            assert type(err).__name__.startswith("History"), type(err)
            TALLY["clear"] += 1
        else:  # only a change that means nothing (e.g. whitespace around the manifest's JSON) may pass
            assert name == "manifest.json", (name, how)
            assert json.loads((folder / name).read_bytes()) == json.loads(original), how
            assert all(torch.equal(delta[k], expected[k]) for k in expected)
            TALLY["harmless"] += 1
        assert tree_bytes(folder) == before  # opening a damaged store deletes and rewrites nothing


@pytest.fixture(scope="module")
def pristine_queue(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("queue")
    queue = DeletionQueue(folder)
    for i, ids in enumerate(([3, 4, 5], [7], [11, 12])):
        queue.submit(DeletionRequest.new(kind="sample", sample_ids=ids, request_id=f"r{i}"))
    receipt = sample_receipt("r0", [3, 4, 5], server_round=2, metrics={"FA": 0.5})
    queue.mark_served("r0", resolved_ids=np.array([3, 4, 5]), receipt=receipt)
    queue.record_failure("r1", "verification failed")
    return folder


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_damaged_request_files_raise_naming_the_file_and_change_nothing(
    pristine_queue: Path, data: st.DataObject
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "state"
        shutil.copytree(pristine_queue, folder)
        reference = DeletionQueue(pristine_queue)
        files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
        name = data.draw(st.sampled_from(files))
        is_receipt = name.startswith("receipts")
        how = data.draw(st.sampled_from(["truncate", "garbage", "empty"]) if is_receipt else MUTATIONS)
        assume(how != "rename")
        original = (folder / name).read_bytes()
        _mutate(folder / name, how, data)
        assume(how == "delete" or (folder / name).read_bytes() != original)
        before = tree_bytes(folder)
        queue = DeletionQueue(folder)
        TALLY["tried"] += 1
        TALLY[f"tried:request file: {how}"] += 1
        try:
            state = ([r.to_json() for r in queue.all()], queue.forgotten_ids().tolist(), queue.receipts())
        except DeletionRequestError as err:
            assert Path(name).name.split(".")[0] in str(err), str(err)
            TALLY["clear"] += 1
        else:  # deleting a pending request's file loses it: that is an operator's act, not damage
            expected = (
                [r.to_json() for r in reference.all()],
                reference.forgotten_ids().tolist(),
                reference.receipts(),
            )
            if how == "delete":
                assert name.startswith("requests/") and name.endswith(".json")
            else:
                assert state == expected, (name, how)
            TALLY["harmless"] += 1
        assert tree_bytes(folder) == before


def test_tally_is_consistent() -> None:
    assert TALLY["clear"] <= TALLY["tried"]
    assert dataclasses.is_dataclass(DeletionReceipt)
