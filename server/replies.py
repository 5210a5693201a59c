"""What a usable reply of an unlearning-phase exchange must carry, and the check of it.

The server reads nothing from a client's reply that it has not checked here: an error
reply, a missing record, arrays with unknown / missing keys, wrong shapes or NaN/Inf, a
missing or non-finite metric, or an unreadable receipt makes the reply unusable (logged,
retried, and never aggregated).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import torch
from flwr.app import Message

from fedunlearn import protocol
from fedunlearn.aggregation import check_state
from fedunlearn.errors import ReplyError
from server.state import ServerState


@dataclass(frozen=True)
class Expect:
    """What a usable reply must carry; the server reads nothing from a reply it has not checked.

    ``arrays``: ``"correction"`` (exactly the model's floating-point state entries, e.g. a
    fast or slow correction), ``"parameters"`` (exactly its parameter names, e.g. a Fisher
    diagonal), or None (an ``arrays`` record is optional and may omit entries, but may not
    add any). ``metrics``: keys of the ``metrics`` record that must be finite numbers.
    ``receipt``: a ``receipt`` record holding a receipt JSON object, whenever the reply
    says the request was committed (``verified`` is 1 or absent).
    """

    arrays: str | None = None
    metrics: tuple[str, ...] = ()
    receipt: bool = False


def reply_problem(reply: Message, state: ServerState, expect: Expect = Expect()) -> str | None:
    """Why a reply cannot be used (None: it can): an error, a missing record, wrong keys or
    shapes, NaN/Inf, a missing or non-finite metric, an unreadable receipt."""
    if reply.has_error():
        return f"error reply: {(reply.error.reason or '').splitlines()[0] if reply.error.reason else reply.error.code}"
    content = reply.content
    problems: list[str] = []
    record = content.array_records.get(protocol.ARRAYS)
    if record is None and expect.arrays is not None:
        problems.append(f"no '{protocol.ARRAYS}' record")
    elif record is not None:
        arrays = record.to_torch_state_dict()
        reference = _expected_arrays(state, expect.arrays)
        found = check_state(arrays, reference)
        problems += found if expect.arrays else [p for p in found if not p.startswith("missing entries")]
    metrics = dict(content.metric_records.get(protocol.METRICS) or {})
    missing = [k for k in expect.metrics if k not in metrics]
    if missing:
        problems.append(f"metrics {missing} missing")
    bad = {k: v for k, v in metrics.items() if not _finite_number(v)}
    if bad:
        problems.append(f"metrics must be finite numbers, got {bad}")
    if expect.receipt and metrics.get(protocol.VERIFIED, 1) == 1:
        problems += _receipt_problems(content)
    return "; ".join(problems) if problems else None


def _finite_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _expected_arrays(state: ServerState, kind: str | None) -> dict[str, torch.Tensor]:
    reference = state.strategy.reference_keys
    if kind == "parameters":
        return {name: p.detach() for name, p in state.model.named_parameters()}
    if kind == "correction":
        return {k: v for k, v in reference.items() if v.is_floating_point()}
    return dict(reference)


def _receipt_problems(content: Any) -> list[str]:
    record = content.config_records.get(protocol.RECEIPT)
    text = record.get(protocol.RECEIPT_JSON) if record is not None else None
    try:
        parsed = json.loads(str(text)) if isinstance(text, str) else None
    except json.JSONDecodeError:
        parsed = None
    return [] if isinstance(parsed, dict) else [f"no readable '{protocol.RECEIPT}' record"]


#: What the replies of each phase exchange must carry.
EXPECT_FORGET = Expect("correction", (protocol.PASSED, protocol.NUM_RETAINED))
EXPECT_REMAIN = Expect("correction", (protocol.NUM_EXAMPLES,))
EXPECT_FISHER = Expect("parameters", (protocol.NUM_EXAMPLES,))
EXPECT_VERIFY = Expect(None, (protocol.PASSED,))
EXPECT_COMMIT = Expect(None, (protocol.VERIFIED,), receipt=True)


def metric(reply: Message, key: str) -> float:
    """A numeric metric of a reply that passed ``reply_problem`` (ReplyError otherwise)."""
    metrics = reply.content.metric_records.get(protocol.METRICS)
    value = metrics.get(key) if metrics is not None else None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ReplyError(f"reply metric {key!r} must be a number, got {value!r}")
    return float(value)


def optional_metric(reply: Message, key: str, default: float = 0.0) -> float:
    """A numeric metric a reply may leave out (``default`` then, or when it is not a finite number)."""
    metrics = reply.content.metric_records.get(protocol.METRICS)
    value = metrics.get(key) if metrics is not None else None
    return float(value) if isinstance(value, (int, float)) and _finite_number(value) else default
