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
from flwr.common.config import unflatten_dict
from helpers.receipts import sample_receipt
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from torch import nn

from faults.harness import tree_bytes
from fedunlearn import deletion
from fedunlearn.config import (
    CORRUPTION_KINDS,
    PARTITION_KINDS,
    SELECTOR_NAMES,
    VALUE_DTYPES,
    HistoryConfig,
    TrainConfig,
    UnlearnConfig,
)
from fedunlearn.config.keys import section_keys
from fedunlearn.data import IndexedDataset
from fedunlearn.deletion import DeletionQueue, DeletionReceipt, DeletionRequest
from fedunlearn.errors import ConfigError, DeletionRequestError, FedUnlearnError
from fedunlearn.history import HistoryStore
from fedunlearn.node_cli import forget as forget_cli
from fedunlearn.receipts import ids_hmac
from fedunlearn.run_config import SECTIONS, config_from_sections
from fedunlearn.schedule import parse_schedule
from fedunlearn.site import ClientSite
from fedunlearn.site_unlearning import fast_correction, resolve_request
from fedunlearn.training import train_local
from fedunlearn.unlearning import available_methods, get_method

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
    key = bytes(range(32))
    assert ids_hmac(ids, secret=key) == ids_hmac(sorted(set(ids)), secret=key)


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
    config = config_from_sections(
        unflatten_dict(
            {
                "data.dataset": "digits",
                "train.model": "mlp",
                "data.num-clients": 2,
                "data.samples-per-client": 100,
                "data.test-samples": 50,
                "run.state-root": str(root),
                "data.root": str(root / "no-data"),
                "train.batch-size": 20,
                "train.threads": 1,
            }
        )
    )
    opened = [
        ClientSite.open(config=config, partition_id=p, state_dir=root / f"client-{p}", lineage="run") for p in (0, 1)
    ]
    site = opened[0]
    outcome = site.train_round(site.build_model().state_dict(), server_round=1)
    site.record_round_weights([1], [0.5])
    served = DeletionRequest.new(kind="sample", sample_ids=site.dataset.ids()[:3].tolist(), request_id="served")
    site.queue.submit(served)
    receipt = DeletionReceipt("served", "sample", 3, "", "a", "b", 1, "partial_amnesiac")  # ids_hmac set on commit
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
def _all_keys() -> dict[str, tuple[str, Any]]:
    """Every run-config key (``section.key`` and ``unlearn.<method>.key``) -> (field name, type)."""
    keys: dict[str, tuple[str, Any]] = {}
    for name, section_type in {**SECTIONS, "unlearn": UnlearnConfig}.items():
        keys.update({f"{name}.{k}": v for k, v in section_keys(section_type).items()})
    for method in available_methods():
        settings_type = get_method(method).settings_type
        keys.update({f"unlearn.{method}.{k}": v for k, v in section_keys(settings_type).items()})
    return keys


KEYS = _all_keys()
POSITIVE_INTS = {
    "data.num-clients",
    "data.classes-per-client",
    "data.samples-per-client",
    "data.test-samples",
    "train.local-epochs",
    "train.batch-size",
}
NON_NEGATIVE_INTS = {
    "train.rounds",
    "train.threads",
    "run.retries",
    "experiment.trigger-target",
    "data.exclusive-class",
}
POSITIVE_FLOATS = {"run.round-timeout", "data.dirichlet-alpha", "train.lr", "unlearn.apply-scale", "history.budget-mb"}
NON_NEGATIVE_FLOATS = {"train.weight-decay"}
UNIT_OPEN = {
    "train.fraction",
    "history.keep-ratio",
    "unlearn.alpha",
    "unlearn.remain-fraction",
    "experiment.corrupt-fraction",
}
UNIT_CLOSED = {
    "train.fraction-evaluate",
    "train.momentum",
    "unlearn.max-ta-drop",
    "unlearn.sample-margin",
    "unlearn.mia-margin",
    "unlearn.class-target-fa",
    "unlearn.asr-target",
}
#: The same rules for the keys of every method's settings (``unlearn.<method>.<key>``).
METHOD_POSITIVE_INTS = {
    "outer-steps",
    "epochs",
    "max-steps",
    "batch-size",
    "iters",
    "forget-freq",
    "interval",
    "fisher-max-batches",
}
METHOD_NON_NEGATIVE_INTS = {"remain-steps", "finetune-epochs"}
METHOD_POSITIVE_FLOATS = {"lr", "clip-norm", "saliency-gamma"}
METHOD_NON_NEGATIVE_FLOATS = {"forget-scale", "weight-decay", "temperature"}
METHOD_UNIT_OPEN = {"select-ratio", "calibration-ratio"}
METHOD_UNIT_CLOSED = {"momentum", "target-fa"}
ENUMS = {
    "data.partition": PARTITION_KINDS,
    "history.selector": SELECTOR_NAMES,
    "history.dtype": VALUE_DTYPES,
    "experiment.corrupt-kind": CORRUPTION_KINDS,
}
#: Keys no range applies to (paths, flags, the seed; the schedule is checked by the simulation
#: driver's preflight and parse_schedule, the saliency rule when SFR-on builds its mask).
UNCHECKED = {
    "run.seed",
    "run.out-dir",
    "run.resume",
    "data.root",
    "data.download",
    "history.record",
    "history.record-full",
    "history.server-log",
    "unlearn.adaptive",
    "unlearn.parallel-slow",
    "experiment.deletion-schedule",
    "unlearn.sfr_on.saliency",
    "unlearn.sfr_on.local-remain",
    "unlearn.sfr_on.momentum-carry",
}


def _bad_values(key: str) -> st.SearchStrategy[Any] | None:
    """Values outside the documented range of ``key`` (None: no range applies)."""
    method_key = key.split(".", 2)[2] if key.startswith("unlearn.") and key.count(".") == 2 else None
    outside_open = st.one_of(st.floats(max_value=0.0), st.floats(min_value=1.0 + 1e-9), st.just(math.nan))
    outside_closed = st.one_of(st.floats(max_value=-1e-9), st.floats(min_value=1.0 + 1e-9), st.just(math.nan))
    rules: list[tuple[set[str], set[str], st.SearchStrategy[Any]]] = [
        (POSITIVE_INTS, METHOD_POSITIVE_INTS, st.integers(max_value=0)),
        (NON_NEGATIVE_INTS, METHOD_NON_NEGATIVE_INTS, st.integers(max_value=-1)),
        (
            POSITIVE_FLOATS,
            METHOD_POSITIVE_FLOATS,
            st.one_of(st.floats(max_value=0.0), st.just(math.nan), st.just(math.inf)),
        ),
        (
            NON_NEGATIVE_FLOATS,
            METHOD_NON_NEGATIVE_FLOATS,
            st.one_of(st.floats(max_value=-1e-9), st.just(math.nan), st.just(math.inf)),
        ),
        (UNIT_OPEN, METHOD_UNIT_OPEN, outside_open),
        (UNIT_CLOSED, METHOD_UNIT_CLOSED, outside_closed),
        (set(), {"selector"}, st.text(max_size=6).filter(lambda t: t.strip() not in SELECTOR_NAMES)),
    ]
    for section_keys_, method_keys, strategy in rules:
        if key in section_keys_ or method_key in method_keys:
            return strategy
    if key in ENUMS:
        return st.text(max_size=6).filter(lambda t: t.strip() not in ENUMS[key])
    return {
        "train.device": st.text(max_size=6).filter(lambda t: t not in ("auto", "cpu") and not t.startswith("cuda")),
        "experiment.trigger-size": st.one_of(st.integers(max_value=0), st.integers(min_value=15)),
        "experiment.corrupt-client": st.one_of(st.integers(max_value=-1), st.integers(min_value=5, max_value=10**6)),
        "data.exclusive-client": st.one_of(st.integers(max_value=-1), st.integers(min_value=5, max_value=10**6)),
        "run.state-root": st.just(""),
        "data.dataset": st.just(""),
        "train.model": st.just(""),
        "unlearn.method": st.one_of(st.just(""), st.text(alphabet="xyz", min_size=1, max_size=6)),
    }.get(key)


OUT_OF_RANGE: dict[str, st.SearchStrategy[Any]] = {k: s for k in KEYS if (s := _bad_values(k)) is not None}
WRONG_TYPE = st.one_of(
    st.lists(st.integers(), min_size=1, max_size=2),
    st.dictionaries(st.text(alphabet="ab", min_size=1, max_size=2), st.integers(), min_size=1, max_size=1),
)
NUMERIC_KEYS = sorted(k for k, (_, hint) in KEYS.items() if hint in (int, float, bool, int | None, float | None))
BAD_SCHEDULE = st.text(alphabet="0123456789:;abcsmplet.-", min_size=1, max_size=12).filter(
    lambda t: _schedule_is_bad(t)
)


def _schedule_is_bad(text: str) -> bool:
    try:
        parse_schedule(text, num_clients=5)
    except ConfigError:
        return True
    return False


def _names(key: str) -> tuple[str, ...]:
    field, _ = KEYS[key]
    return key, field, field.replace("_", " ")


def test_every_validated_run_config_key_has_bad_values() -> None:
    assert set(KEYS) - set(OUT_OF_RANGE) == UNCHECKED
    assert all(KEYS[k][1] in (bool, str, str | None, int) for k in UNCHECKED)


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_out_of_range_run_config_values_are_refused_naming_the_key(data: st.DataObject) -> None:
    key = data.draw(st.sampled_from(sorted(OUT_OF_RANGE)))
    value = data.draw(OUT_OF_RANGE[key])
    expect_clear_error(
        f"run config: out of range {key}",
        lambda: config_from_sections(unflatten_dict({key: value})),
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
        lambda: config_from_sections(unflatten_dict({key: value})),
        ConfigError,
        *_names(key),
    )


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_several_bad_values_are_all_named_in_one_error(data: st.DataObject) -> None:
    keys = data.draw(st.lists(st.sampled_from(sorted(OUT_OF_RANGE)), min_size=2, max_size=4, unique=True))
    assume("experiment.corrupt-client" not in keys or "data.num-clients" not in keys)
    unknown = data.draw(st.text(alphabet="qwz-", min_size=3, max_size=8).filter(lambda k: k not in KEYS))
    values = {k: data.draw(OUT_OF_RANGE[k]) for k in keys} | {unknown: 1}
    error = expect_clear_error(
        "run config: several bad values",
        lambda: config_from_sections(unflatten_dict(values)),
        ConfigError,
        unknown,
    )
    for key in keys:
        assert any(n in str(error) for n in _names(key)), (key, str(error))


def test_a_cross_section_problem_is_named_with_the_others() -> None:
    # experiment.corrupt-client is checked against data.num-clients (default 5) across sections
    values = {"experiment.corrupt-client": 7, "train.lr": -1.0}

    error = expect_clear_error(
        "run config: cross-section and section problems",
        lambda: config_from_sections(unflatten_dict(values)),
        ConfigError,
        "train.lr",
    )

    assert "experiment.corrupt-client" in str(error), str(error)


def test_an_unknown_method_is_named_with_the_other_problems_of_its_section() -> None:
    values = {"unlearn.method": "amnesia", "unlearn.apply-scale": -1.0}

    error = expect_clear_error(
        "run config: unknown method and a bad unlearn value",
        lambda: config_from_sections(unflatten_dict(values)),
        ConfigError,
        "unlearn.apply-scale",
    )

    assert "amnesia" in str(error), str(error)


@settings(max_examples=60, deadline=None)
@given(text=BAD_SCHEDULE)
def test_bad_deletion_schedules_are_refused_naming_the_entry(text: str) -> None:
    expect_clear_error(
        "run config: bad deletion schedule",
        lambda: parse_schedule(text, num_clients=5),
        ConfigError,
        "deletion-schedule",
    )


@pytest.mark.parametrize(("old", "new"), [("unlearn-method", "unlearn.method"), ("num-server-rounds", "train.rounds")])
def test_an_old_flat_key_is_refused_naming_its_new_key(old: str, new: str) -> None:
    expect_clear_error(
        "run config: old flat key", lambda: config_from_sections(unflatten_dict({old: 1})), ConfigError, new
    )


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
