"""TEST HOOK ONLY: scripted faults for a ClientApp, to test how the federation copes with them.

Never enable this on a real node. A *fault plan* makes a client fail on purpose, e.g.
``"forget:error:2,remain:nan:1:3"``: the first 2 ``train.forget`` messages get an error reply,
and the 4th ``train.remain`` message (skip 3, then 1) gets a reply with a NaN in its arrays.
Each entry is ``TARGET:ACTION:COUNT[:SKIP]``:

- TARGET: the action name of the message type (``forget`` for ``train.forget``, ``commit``
  for ``query.commit``) or the category of a plain one (``train``, ``evaluate``); see TARGETS;
- ACTION: ``error`` (error reply with a reason, nothing done), ``crash`` (the ClientApp
  raises, as a dying process would), ``hang=SECONDS`` (sleep, then work: a timeout),
  ``lost`` (the work is done, then the reply is lost), ``nan`` / ``inf`` (one entry of every
  array becomes NaN / +Inf; replies without arrays get non-finite metrics), ``shape`` (every
  array loses its last entry), ``extra-key`` / ``missing-key`` (an array is added / removed),
  ``garbage`` (finite but absurd arrays: every entry times 1e4 plus noise).

Two explicit steps are needed, so a plan cannot take effect by accident:

1. the plan, in the node's ``node_config`` key ``fault-plan`` (deployment:
   ``--node-config "... fault-plan='forget:error:1'"``) or, for Flower simulations, whose
   virtual nodes have no node config of their own, in the environment variable
   ``FEDUNLEARN_FAULT_PLAN`` as ``"<partition id>=<plan>;<partition id>=<plan>"``;
2. the environment variable ``FEDUNLEARN_ENABLE_FAULT_INJECTION`` set to ``ENABLE_TOKEN``.

A plan without the token is refused (every reply is an error naming the cause) rather than
ignored, so a forgotten test setting can never run silently. Every injected fault is logged
as a warning. How many messages of each target a node has seen is counted in
``<state dir>/fault-injection/counts.json`` (it survives process restarts).

This module is pure Python; the Flower side is ``clients.common.fault_injection_mod``.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np

from fedunlearn.atomic import write_json_atomic
from fedunlearn.errors import ConfigError, FedUnlearnError

logger = logging.getLogger(__name__)

NODE_CONFIG_KEY: Final = "fault-plan"
PLAN_ENV: Final = "FEDUNLEARN_FAULT_PLAN"
ENABLE_ENV: Final = "FEDUNLEARN_ENABLE_FAULT_INJECTION"
ENABLE_TOKEN: Final = "yes-break-this-node-for-testing"
COUNTS_DIR: Final = "fault-injection"
TARGETS: Final = (
    "status",
    "train",
    "evaluate",
    "fisher",
    "forget",
    "remain",
    "verify",
    "commit",
    "snapshot",
    "restore",
)
#: Actions applied before the handler runs, and after it (to its reply).
BEFORE_ACTIONS: Final = ("error", "crash", "hang")
AFTER_ACTIONS: Final = ("lost", "nan", "inf", "shape", "extra-key", "missing-key", "garbage")
EXTRA_KEY: Final = "injected-extra-tensor"


class FaultInjected(FedUnlearnError):
    """Raised (and turned into an error reply) by an ``error`` fault of a test plan."""


@dataclass(frozen=True)
class FaultRule:
    """One plan entry: the ``count`` messages of ``target`` after the first ``skip`` get ``action``."""

    target: str
    action: str
    count: int
    skip: int = 0
    seconds: float = 0.0  # for ``hang``

    def applies(self, seen: int) -> bool:
        """Whether the message numbered ``seen`` (0-based) of this target is faulty."""
        return self.skip <= seen < self.skip + self.count


def parse_plan(text: str) -> tuple[FaultRule, ...]:
    """Parse ``TARGET:ACTION:COUNT[:SKIP],...``; every malformed entry is named in one ConfigError."""
    rules, problems = [], []
    for raw in (part.strip() for part in text.split(",")):
        if not raw:
            continue
        try:
            rules.append(_parse_rule(raw))
        except ValueError as err:
            problems.append(
                f"fault-plan entry {raw!r}: {err}; expected TARGET:ACTION:COUNT[:SKIP], e.g. 'forget:error:2'"
            )
    if problems:
        raise ConfigError(problems)
    return tuple(rules)


def _parse_rule(raw: str) -> FaultRule:
    parts = raw.split(":")
    if len(parts) not in (3, 4):
        raise ValueError(f"{len(parts)} fields")
    target, action, seconds = parts[0], parts[1], 0.0
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r} (one of {', '.join(TARGETS)})")
    if action.startswith("hang="):
        action, seconds = "hang", float(action.removeprefix("hang="))
        if not (math.isfinite(seconds) and seconds > 0):
            raise ValueError(f"hang needs a number of seconds > 0, got {raw!r}")
    if action not in BEFORE_ACTIONS + AFTER_ACTIONS or (action == "hang" and seconds == 0.0):
        raise ValueError(
            f"unknown action {action!r} (one of {', '.join(BEFORE_ACTIONS[:2] + AFTER_ACTIONS)}, hang=SECONDS)"
        )
    count, skip = int(parts[2]), int(parts[3]) if len(parts) == 4 else 0
    if count < 1 or skip < 0:
        raise ValueError(f"COUNT must be >= 1 and SKIP >= 0, got {count} and {skip}")
    return FaultRule(target, action, count, skip, seconds)


def plan_text_for(
    node_config: Mapping[str, object], partition_id: int | None, environ: Mapping[str, str] | None = None
) -> str | None:
    """The plan this node runs (node_config first, else its entry of ``FEDUNLEARN_FAULT_PLAN``).

    Raises FedUnlearnError if a plan is set but ``FEDUNLEARN_ENABLE_FAULT_INJECTION`` does
    not hold ENABLE_TOKEN: a test setting left on a real node must fail loudly.
    """
    env = os.environ if environ is None else environ
    text = node_config.get(NODE_CONFIG_KEY)
    if text is None and env.get(PLAN_ENV):
        entries = dict(_split_env_entry(e) for e in env[PLAN_ENV].split(";") if e.strip())
        text = entries.get(str(partition_id))
    if text is None or not str(text).strip():
        return None
    if env.get(ENABLE_ENV) != ENABLE_TOKEN:
        raise FedUnlearnError(
            f"this node has a fault plan ({NODE_CONFIG_KEY}={text!r}), a test hook that breaks the node on purpose, "
            f"but {ENABLE_ENV} is not set to the test token; remove the fault plan from the node config "
            f"(and {PLAN_ENV} from the environment)"
        )
    return str(text)


def _split_env_entry(entry: str) -> tuple[str, str]:
    key, sep, plan = entry.partition("=")
    if not sep:
        raise ConfigError(f"{PLAN_ENV} entry {entry!r} must be '<partition id>=<plan>'")
    return key.strip(), plan.strip()


class FaultInjector:
    """Counts the messages of each target a node handled (on disk) and says which fault applies."""

    def __init__(self, rules: tuple[FaultRule, ...], state_dir: str | Path) -> None:
        self.rules = rules
        self.path = Path(state_dir) / COUNTS_DIR / "counts.json"

    def next_fault(self, target: str) -> FaultRule | None:
        """Count one more message of ``target``; return the rule that makes it faulty, if any."""
        counts: dict[str, int] = json.loads(self.path.read_text(encoding="utf-8")) if self.path.exists() else {}
        seen = int(counts.get(target, 0))
        counts[target] = seen + 1
        write_json_atomic(self.path, counts)
        rule = next((r for r in self.rules if r.target == target and r.applies(seen)), None)
        if rule is not None:
            logger.warning("FAULT INJECTION (test hook): %s message #%d gets %r", target, seen + 1, rule.action)
        return rule


def corrupt_arrays(arrays: Mapping[str, np.ndarray], action: str, *, seed: int = 0) -> dict[str, np.ndarray]:
    """The arrays of a reply as an ``AFTER_ACTIONS`` fault leaves them (inputs unchanged)."""
    out = {k: np.array(v, copy=True) for k, v in arrays.items()}
    floats = [k for k, v in out.items() if np.issubdtype(v.dtype, np.floating) and v.size]
    if action in ("nan", "inf"):
        for key in floats:
            out[key].reshape(-1)[0] = np.nan if action == "nan" else np.inf
    elif action == "shape":
        out = {k: (v.reshape(-1)[:-1] if k in floats else v) for k, v in out.items()}
    elif action == "extra-key":
        out[EXTRA_KEY] = np.zeros(3, dtype=np.float32)
    elif action == "missing-key" and floats:
        del out[floats[0]]
    elif action == "garbage":
        rng = np.random.default_rng(seed)
        for key in floats:
            out[key] = (out[key] * 1e4 + rng.normal(0.0, 10.0, out[key].shape)).astype(out[key].dtype)
    return out


def corrupt_metrics(metrics: Mapping[str, float | int], action: str) -> dict[str, float | int]:
    """Metrics of a reply without arrays under a ``nan`` / ``inf`` fault (others: unchanged)."""
    if action not in ("nan", "inf"):
        return dict(metrics)
    bad = math.nan if action == "nan" else math.inf
    return {k: bad for k in metrics}
