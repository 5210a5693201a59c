"""The fast-slow loop of a phase, stopped when the forgetting is verified, not after a fixed count.

ALGORITHMS.md, "Federated fast-slow aggregation". A phase serves one request, or several of
different clients at once (filed before the same round): each outer step starts with one
exchange with every requester in parallel. A requester judges the weights it was sent with
its criterion (``fedunlearn.criterion``) and, while the criterion fails, returns its fast
change. When every requester's criterion holds the loop stops (before any step: the data
left no measurable trace, and the model is committed unchanged). Otherwise the server
applies the changes (θ_fast = θ + s·ΣΔ) and runs the slow, remain-preserving steps: K CE
steps by a sample of the remaining clients (and each requester on what it keeps) from
θ_fast, FedAvg'd into the candidate. A candidate whose test accuracy falls by more than
``unlearn.max-ta-drop`` is not taken: the strength ``s`` is halved and the step tried again
(backing off instead of rolling back and retrying the same settings). The method's traits
decide the rest: ``fast`` ("none": no fast exchange; "once"; "spread"), ``strengthen``
("scale": the server re-applies the first correction at half strength; "repeat": the client
sends a fresh one from the current weights), ``needs_remain_fisher`` and ``control``
(controls run their budget, unjudged). The final weights are judged once more inside the
commit exchange (``server.phase.commit``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from logging import INFO
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.common import log
from flwr.serverapp import Grid

from fedunlearn import protocol
from fedunlearn.aggregation import add_scaled, check_state, fast_slow_step, fedavg_weights, weighted_sum
from fedunlearn.unlearning import MethodSpec, get_method, method_settings
from server.phase.exchange import Exchange, PhaseAborted, PhaseStats, exchange
from server.replies import EXPECT_FISHER, EXPECT_FORGET, EXPECT_REMAIN, Expect, metric, optional_metric
from server.state import ServerState, evaluate_global
from server.strategy import UnlearningFedAvg

#: A strength below this after backing off ends the phase (the method cannot go further safely).
MIN_STRENGTH = 1 / 16
#: A request of a phase: the requesting node and its request id.
Request = tuple[int, str]


@dataclass
class LoopResult:
    """Where the loop left the weights, and what it did to get there."""

    theta: dict[str, torch.Tensor]
    steps_run: int = 0
    passed: dict[int, bool] = field(default_factory=dict)  # per requester: its criterion when last judged
    no_trace: bool = False  # every criterion held before any step: the model is unchanged
    client_steps: int = 0  # SGD steps run by all clients together (fast and slow)
    client_examples: int = 0  # samples those steps processed
    backoffs: int = 0
    checks: dict[int, list[dict[str, float]]] = field(default_factory=dict)  # per requester, per judgement

    @property
    def all_passed(self) -> bool:
        """Whether every requester's criterion held when last judged."""
        return bool(self.passed) and all(self.passed.values())


@dataclass
class _Loop:
    """What one phase's loop carries from step to step."""

    grid: Grid
    state: ServerState
    spec: MethodSpec[Any]
    requests: list[Request]
    stats: PhaseStats
    remaining: list[int]
    ta_floor: float
    fisher: ArrayRecord | None = None
    fisher_count: float = 0.0
    first: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)  # per requester (strengthen "scale")
    keeps_data: dict[int, bool] = field(default_factory=dict)
    strength: float = 1.0
    step: int = 0
    class_level: bool = False  # a requester forgets a whole class


class PhaseLoop:
    """The loop of one phase, run in stretches: ``advance()`` runs outer steps until the
    requesters' criteria hold (``result.all_passed``), the budget is spent (``finished``),
    or, for a method that strengthens by rescaling its first correction (no new client work
    per step), after each step taken, so the caller can try committing at once: the commit
    exchange then doubles as the check, and a phase that verifies after one step costs two
    round trips (three with slow steps)."""

    def __init__(self, grid: Grid, state: ServerState, requests: list[Request], stats: PhaseStats) -> None:
        cfg = state.config.unlearn
        self.spec, self.settings = get_method(cfg.method), method_settings(cfg)
        requesters = [node for node, _ in requests]
        self.ta_before = evaluate_global(state).accuracy
        self.loop = _Loop(grid, state, self.spec, list(requests), stats, remaining_nodes(grid, state, requesters), 0.0)
        self.loop.ta_floor = self.ta_before - cfg.max_ta_drop
        self.result = LoopResult(dict(state.arrays.to_torch_state_dict()))
        if self.spec.traits.needs_remain_fisher:
            self.loop.fisher, self.loop.fisher_count = remain_fisher(
                grid, state, self.loop.remaining, self.result.theta, stats
            )

    @property
    def allowed_drop(self) -> float:
        """How far test accuracy may fall: ``unlearn.max-ta-drop``, plus one class's share of
        the test set when a requester forgets a class (RT cannot recognise it either)."""
        loop = self.loop
        classes = int(loop.state.test.num_classes)
        return loop.state.config.unlearn.max_ta_drop + (1.0 / classes if loop.class_level else 0.0)

    @property
    def finished(self) -> bool:
        """The budget is spent (or the strength backed off below the minimum)."""
        return self.loop.step >= self.settings.outer_steps or self.loop.strength < MIN_STRENGTH

    @property
    def optimistic(self) -> bool:
        """Whether the caller should try committing after each step (see the class docstring)."""
        traits = self.spec.traits
        return traits.strengthen == "scale" and not traits.control and self.loop.state.config.unlearn.adaptive

    def drop(self, nodes: set[int]) -> None:
        """Leave out requesters whose requests were settled (committed, or refused)."""
        self.loop.requests = [(n, rid) for n, rid in self.loop.requests if n not in nodes]
        self.result.passed = {n: p for n, p in self.result.passed.items() if n not in nodes}

    def judged(self, passed: dict[int, bool]) -> None:
        """Take the criteria a (tentative) commit reported for the current weights."""
        self.result.passed.update(passed)

    def advance(self) -> LoopResult:
        """Run outer steps (see the class docstring); the global model is untouched."""
        loop, result, cfg = self.loop, self.result, self.loop.state.config.unlearn
        parallel = cfg.parallel_slow and self.settings.remain_steps > 0
        while not self.finished:
            judged = not (self.optimistic and loop.step > 0)  # a scale step needs no client work after the first
            delta, slow = (
                (_fast_and_slow(loop, result, loop.step) if parallel else (_fast(loop, result, loop.step), None))
                if judged
                else (_rescaled(loop), None)
            )
            if judged and result.all_passed and not self.spec.traits.control and (cfg.adaptive or loop.step == 0):
                result.no_trace = loop.step == 0 and not result.steps_run
                log(
                    INFO,
                    "[UNLEARN] criterion holds after %d step(s)%s",
                    loop.step,
                    " (no trace to remove)" if result.no_trace else "",
                )
                return result
            loop.ta_floor = self.ta_before - self.allowed_drop
            theta_fast = add_scaled(result.theta, delta, cfg.apply_scale * loop.strength)
            step = loop.step
            candidate = (
                _slow(loop, result, step, theta_fast)
                if slow is None
                else _combine(loop, result, step, theta_fast, slow)
            )
            if (
                evaluate_global(loop.state, ArrayRecord(candidate)).accuracy < loop.ta_floor
                and not self.spec.traits.control
            ):
                loop.strength /= 2
                result.backoffs += 1
                log(
                    INFO,
                    "[UNLEARN] step %d lowered test accuracy too far: strength halved to %.3f",
                    step + 1,
                    loop.strength,
                )
                continue
            result.theta, result.steps_run = candidate, step + 1
            result.passed = {node: False for node in result.passed}  # judged again by the next exchange
            loop.step += 1
            if self.optimistic:
                return result
        return result


def _rescaled(loop: _Loop) -> dict[str, torch.Tensor]:
    """The requesters' first corrections again, at half strength (``strengthen="scale"``)."""
    total: dict[str, torch.Tensor] = {}
    for node, _ in loop.requests:
        for key, value in loop.first.get(node, {}).items():
            total[key] = total[key] + 0.5 * value if key in total else 0.5 * value
    return total


def _fast(loop: _Loop, result: LoopResult, step: int) -> dict[str, torch.Tensor]:
    """The requesters' summed fast change for this step, and their criteria on the current
    weights, from one exchange with all of them."""
    if loop.spec.traits.fast == "none":
        return {}
    ids = dict(loop.requests)
    build = functools.partial(
        _forget_message,
        loop.state.strategy,
        requests=ids,
        step=step,
        arrays=ArrayRecord(result.theta),
        fisher=_fisher(loop),
    )
    name = f"fast {step + 1} ({loop.spec.name}, {len(ids)} request(s))"
    replies = exchange(loop.grid, loop.state, Exchange(name, list(ids), build, True, EXPECT_FORGET), loop.stats)
    return _take_forget(loop, result, step, replies)


def _fast_and_slow(loop: _Loop, result: LoopResult, step: int) -> tuple[dict[str, torch.Tensor], _Slow]:
    """The fast changes and the remaining clients' slow corrections in ONE exchange; the slow
    ones start from the step's starting weights (``unlearn.parallel-slow``)."""
    ids, strategy = dict(loop.requests), loop.state.strategy
    arrays = ArrayRecord(result.theta)
    remain = strategy.sample_remaining(loop.remaining, step, include=[])
    forget = functools.partial(_forget_message, strategy, requests=ids, step=step, arrays=arrays, fisher=_fisher(loop))
    slow = functools.partial(_remain_message, strategy, requests=ids, step=step, arrays=arrays, spec=loop.spec)
    nodes = [*ids, *remain] if loop.spec.traits.fast != "none" else remain

    def build(node: int) -> Message:
        return forget(node) if node in ids else slow(node)

    def expect(node: int) -> Expect:
        return EXPECT_FORGET if node in ids else EXPECT_REMAIN

    spec = Exchange(f"fast+slow {step + 1} ({loop.spec.name})", nodes, build, False, expect)
    replies = exchange(loop.grid, loop.state, spec, loop.stats)
    missing = [n for n in ids if n in nodes and n not in replies]
    if missing:
        raise PhaseAborted(f"fast+slow {step + 1}: no usable reply from requester node(s) {missing}", transient=True)
    delta = _take_forget(loop, result, step, {n: r for n, r in replies.items() if n in ids})
    return delta, _take_remain(loop, result, step, {n: r for n, r in replies.items() if n not in ids}, remain)


def _take_forget(loop: _Loop, result: LoopResult, step: int, replies: dict[int, Message]) -> dict[str, torch.Tensor]:
    """Record the requesters' criteria and costs; return their summed (strengthened) changes."""
    total: dict[str, torch.Tensor] = {}
    for node, reply in sorted(replies.items(), key=_by_partition(loop.state)):
        result.passed[node] = metric(reply, protocol.PASSED) == 1
        result.checks.setdefault(node, []).append(_figures(reply))
        loop.keeps_data[node] = metric(reply, protocol.NUM_RETAINED) > 0
        loop.class_level |= optional_metric(reply, protocol.CLASS_LEVEL) == 1
        result.client_steps += int(optional_metric(reply, protocol.FORWARD_BACKWARD))
        result.client_examples += int(optional_metric(reply, protocol.EXAMPLES))
        delta = _strengthened(
            loop, node, step, dict(reply.content.array_records[protocol.ARRAYS].to_torch_state_dict())
        )
        for key, value in delta.items():
            total[key] = total[key] + value if key in total else value.clone()
    return total


def _strengthened(loop: _Loop, node: int, step: int, delta: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A requester's change as applied: as sent, or (``strengthen="scale"``) its first
    correction again at half strength after the first step."""
    if loop.spec.traits.strengthen != "scale":
        return delta
    first = loop.first.setdefault(node, delta)
    return first if step == 0 else {k: 0.5 * v for k, v in first.items()}


def _figures(reply: Message) -> dict[str, float]:
    metrics = reply.content.metric_records[protocol.METRICS]
    return {
        k.removeprefix(protocol.CHECK_PREFIX): float(v)  # type: ignore[arg-type]
        for k, v in metrics.items()
        if k.startswith(protocol.CHECK_PREFIX) or k == protocol.PASSED
    }


def remaining_nodes(grid: Grid, state: ServerState, requesters: list[int]) -> list[int]:
    """Active clients other than the requesters and those whose own requests still wait
    (they must not reinforce data they asked to forget)."""
    strategy = state.strategy
    waiting = {n for n, ids in strategy.announced.items() if ids and n not in requesters}
    return [n for n in strategy.active_nodes(grid) if n not in requesters and n not in waiting]


@dataclass(frozen=True)
class _Slow:
    """The usable slow corrections of one step and their FedAvg weights (sample counts)."""

    deltas: list[dict[str, torch.Tensor]]
    weights: list[float]


def _slow(loop: _Loop, result: LoopResult, step: int, theta_fast: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """θ_fast plus the FedAvg of the remain corrections made from it (θ_fast without slow steps)."""
    settings = method_settings(loop.state.config.unlearn)
    if settings.remain_steps == 0:
        return theta_fast
    strategy = loop.state.strategy
    keeping = [node for node, _ in loop.requests if loop.keeps_data.get(node, True)]
    nodes = strategy.sample_remaining(loop.remaining, step, include=keeping)
    arrays = ArrayRecord(theta_fast)
    build = functools.partial(
        _remain_message, strategy, requests=dict(loop.requests), step=step, arrays=arrays, spec=loop.spec
    )
    replies = exchange(
        loop.grid, loop.state, Exchange(f"slow {step + 1}", nodes, build, False, EXPECT_REMAIN), loop.stats
    )
    return _combine(loop, result, step, theta_fast, _take_remain(loop, result, step, replies, nodes))


def _take_remain(loop: _Loop, result: LoopResult, step: int, replies: dict[int, Message], nodes: list[int]) -> _Slow:
    """The usable slow corrections (by partition) and their costs; PhaseAborted when none came."""
    settings = method_settings(loop.state.config.unlearn)
    usable = [(r, metric(r, protocol.NUM_EXAMPLES)) for _, r in sorted(replies.items(), key=_by_partition(loop.state))]
    usable = [(r, w) for r, w in usable if w > 0]
    if nodes and not usable:
        raise PhaseAborted(f"slow step {step + 1}: no remaining client answered", transient=True)
    result.client_steps += settings.remain_steps * len(usable)
    batch = loop.state.config.train.batch_size
    result.client_examples += sum(min(settings.remain_steps * batch, int(w) * settings.remain_steps) for _, w in usable)
    deltas = [dict(r.content.array_records[protocol.ARRAYS].to_torch_state_dict()) for r, _ in usable]
    if loop.spec.traits.needs_remain_fisher:
        _refresh_fisher(loop, usable)
    return _Slow(deltas, [w for _, w in usable])


def _refresh_fisher(loop: _Loop, usable: list[tuple[Message, float]]) -> None:
    """The remaining clients' Fisher at the weights of this slow step: the next mask's F_r
    (replies without a usable one are left out; none usable keeps the previous F_r)."""
    reference = {name: p.detach() for name, p in loop.state.model.named_parameters()}
    found = []
    for reply, weight in usable:
        record = reply.content.array_records.get(protocol.REMAIN_FISHER)
        if record is None:
            continue
        values = dict(record.to_torch_state_dict())
        if not check_state(values, reference) and all(bool((v >= 0).all()) for v in values.values()):
            found.append((values, weight))
    if found:
        loop.fisher = ArrayRecord(weighted_sum([v for v, _ in found], fedavg_weights([w for _, w in found])))
        loop.fisher_count = float(sum(w for _, w in found))


def _combine(
    loop: _Loop, result: LoopResult, step: int, theta_fast: dict[str, torch.Tensor], slow: _Slow
) -> dict[str, torch.Tensor]:
    """θ_fast plus the FedAvg of the slow corrections (then the optional Lookahead step)."""
    candidate = fast_slow_step(theta_fast, {}, slow.deltas, slow.weights) if slow.deltas else dict(theta_fast)
    alpha = loop.state.config.unlearn.alpha
    if alpha != 1.0:  # Lookahead outer step from the step's start
        change = {
            k: candidate[k].float() - result.theta[k].float() for k in candidate if candidate[k].is_floating_point()
        }
        candidate = fast_slow_step(result.theta, {}, [change], [1.0], alpha=alpha)
    require_finite(candidate, f"outer step {step + 1}")
    return candidate


def _by_partition(state: ServerState) -> Any:
    return lambda item: state.strategy.partition_of.get(item[0], -1)


def _fisher(loop: _Loop) -> tuple[ArrayRecord, float] | None:
    return (loop.fisher, loop.fisher_count) if loop.fisher is not None else None


def remain_fisher(
    grid: Grid, state: ServerState, nodes: list[int], theta: dict[str, torch.Tensor], stats: PhaseStats
) -> tuple[ArrayRecord, float]:
    """Remaining clients' diagonal Fisher averaged by their sample counts (F_r of the mask),
    and the samples it covers."""
    strategy = state.strategy
    arrays = ArrayRecord(theta)
    replies = exchange(
        grid,
        state,
        Exchange(
            "fisher",
            nodes,
            lambda n: strategy.build_message(n, protocol.QUERY_FISHER, arrays=arrays, config=ConfigRecord()),
            required=False,
            expect=EXPECT_FISHER,
        ),
        stats,
    )
    if not replies:
        raise PhaseAborted("no remaining client sent its Fisher diagonal", transient=True)
    ordered = [r for _, r in sorted(replies.items(), key=_by_partition(state))]
    fishers = [r.content.array_records[protocol.ARRAYS].to_torch_state_dict() for r in ordered]
    counts = [metric(r, protocol.NUM_EXAMPLES) for r in ordered]
    return ArrayRecord(weighted_sum(fishers, fedavg_weights(counts))), float(sum(counts))


def _forget_message(
    strategy: UnlearningFedAvg,
    node: int,
    *,
    requests: dict[int, str],
    step: int,
    arrays: ArrayRecord,
    fisher: tuple[ArrayRecord, float] | None,
) -> Message:
    values: dict[str, Any] = {
        protocol.REQUEST_ID: requests[node],
        protocol.STEP: step,
        protocol.TRAINED_ROUNDS: strategy.trained_rounds(node),
    }
    if fisher is not None:
        values[protocol.REMAIN_FISHER_COUNT] = fisher[1]
    message = strategy.build_message(node, protocol.TRAIN_FORGET, arrays=arrays, config=ConfigRecord(values))
    if fisher is not None:
        message.content[protocol.REMAIN_FISHER] = fisher[0]
    return message


def _remain_message(
    strategy: UnlearningFedAvg,
    node: int,
    *,
    requests: dict[int, str],
    step: int,
    arrays: ArrayRecord,
    spec: MethodSpec[Any],
) -> Message:
    settings = method_settings(strategy.config.unlearn)
    values: dict[str, Any] = {
        protocol.REMAIN_STEPS: settings.remain_steps,
        protocol.STEP: step,
        protocol.SEED: strategy.config.seed * 7919 + step * 101 + strategy.partition_of.get(node, 0),
        protocol.WANT_FISHER: int(spec.traits.needs_remain_fisher),
    }
    optimizer = settings.slow_optimizer(step)
    if optimizer is not None:  # the method's own SGD for its remain steps (SFR-on)
        keys = (protocol.REMAIN_LR, protocol.REMAIN_MOMENTUM, protocol.REMAIN_WEIGHT_DECAY)
        values.update(zip(keys, optimizer, strict=True))
    if node in requests:  # a requester corrects on its retained data, without what it asked to forget
        values[protocol.EXCLUDE_REQUEST] = requests[node]
    return strategy.build_message(node, protocol.TRAIN_REMAIN, arrays=arrays, config=ConfigRecord(values))


def require_finite(theta: dict[str, torch.Tensor], where: str) -> None:
    """Abort the phase (nothing applied) if any weight is NaN/Inf."""
    bad = [k for k, v in theta.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise PhaseAborted(f"{where}: non-finite weights in {bad[:5]}")
