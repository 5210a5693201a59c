"""UnlearningFedAvg: Flower's FedAvg with the hooks fedunlearn needs, and nothing else.

Overrides only the configure/aggregate hooks (as Flower's FedProx does):
- messages carry the federation config and each node's FedAvg weights of past rounds, so a
  client can scale its stored deltas by ``w_k^r`` when it later unlearns;
- node sampling is seeded by round over partition ids, so a retrain (RT) run samples
  exactly the same clients;
- every reply is checked (keys, shapes, finite values) before aggregation and bad ones are
  left out with a log line, never averaged in.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Iterable
from logging import INFO, WARNING
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fedunlearn import protocol
from fedunlearn.aggregation import check_state, fedavg_weights
from fedunlearn.config import FederationConfig


class UnlearningFedAvg(FedAvg):
    """FedAvg that tells clients their aggregation weights and validates every reply.

    ``flat_config`` is the run config as the clients receive it (they build the same
    dataclasses from it); ``lineage`` names the model whose history the clients keep.
    Round weights and departed clients are kept by partition id, so a resumed run (new
    Flower node ids) still knows them.
    """

    def __init__(
        self, config: FederationConfig, *, reference: ArrayRecord, flat_config: dict[str, Any] | None = None
    ) -> None:
        super().__init__(
            fraction_train=config.train.fraction,
            fraction_evaluate=config.train.fraction_evaluate,
            min_train_nodes=1,
            min_evaluate_nodes=0,
            min_available_nodes=1,
            weighted_by_key=protocol.NUM_EXAMPLES,
            arrayrecord_key=protocol.ARRAYS,
            configrecord_key=protocol.CONFIG,
        )
        self.config = config
        self.flat_config = dict(flat_config or {})
        self.lineage = ""
        self.reference_keys = reference.to_torch_state_dict()
        self.partition_of: dict[int, int] = {}  # Flower node_id -> our partition_id
        self.round_weights: dict[int, dict[int, float]] = {}  # partition_id -> round -> w_k^r
        self.last_train_replies: list[Message] = []
        self.last_train_nodes: list[int] = []  # nodes sent a train message in the current round
        self.announced: dict[int, list[str]] = {}  # node_id -> pending request ids it announced
        self.departed_partitions: set[int] = set()  # clients whose client-level deletion was served
        self.held_back: set[int] = set()  # nodes that have not yet confirmed a served deletion
        self.escalated: dict[str, str] = {}  # request id -> why it failed in a way that repeats

    @property
    def departed(self) -> set[int]:
        """Node ids of the clients that left (their client-level deletion was served)."""
        return {n for n, p in self.partition_of.items() if p in self.departed_partitions}

    def depart(self, node_id: int) -> None:
        """Remember that this node's client left for good."""
        self.departed_partitions.add(self.partition_of.get(node_id, -1))

    # ---------------------------------------------------------------- message construction
    def federation_record(self) -> ConfigRecord:
        """The run's config as sent to clients (they build the same dataclasses from it)."""
        return ConfigRecord(self.flat_config)

    def weights_record(self, node_id: int) -> ConfigRecord:
        """All FedAvg weights this node's updates had so far (idempotent on the client)."""
        weights = self.round_weights.get(self.partition_of.get(node_id, -1), {})
        rounds = sorted(weights)
        return ConfigRecord({protocol.ROUNDS: rounds, protocol.WEIGHTS: [weights[r] for r in rounds]})

    def trained_rounds(self, node_id: int) -> list[int]:
        """The rounds in which this node's update entered the global model (weight > 0)."""
        weights = self.round_weights.get(self.partition_of.get(node_id, -1), {})
        return sorted(r for r, w in weights.items() if w > 0)

    def build_message(
        self, node_id: int, message_type: str, *, arrays: ArrayRecord | None, config: ConfigRecord
    ) -> Message:
        """One message with the federation config, the lineage and the node's round weights."""
        content = RecordDict(
            {
                protocol.CONFIG: ConfigRecord({**dict(config), protocol.LINEAGE: self.lineage}),
                protocol.FEDERATION: self.federation_record(),
                protocol.ROUND_WEIGHTS: self.weights_record(node_id),
            }
        )
        if arrays is not None:
            content.array_records[protocol.ARRAYS] = arrays
        return Message(content=content, message_type=message_type, dst_node_id=node_id)

    def active_nodes(self, grid: Grid) -> list[int]:
        """Connected nodes that still take part (by partition id)."""
        online = set(grid.get_node_ids())
        pairs = sorted(
            (pid, nid)
            for nid, pid in self.partition_of.items()
            if nid in online and pid not in self.departed_partitions
        )
        return [nid for _, nid in pairs]

    def sample_remaining(self, remaining: list[int], step: int, *, include: list[int]) -> list[int]:
        """Remaining clients for one slow step (``unlearn.remain-fraction``, by default the share
        a training round samples; seeded), plus ``include`` (the requesters, which correct on
        their own retained data too), by partition id."""
        fraction = self.config.unlearn.remain_fraction
        fraction = self.config.train.fraction if fraction is None else fraction
        chosen = list(remaining)
        if fraction < 1.0 and remaining:
            count = max(1, round(fraction * len(remaining)))
            chosen = random.Random(self.config.seed * 31 + step).sample(remaining, count)
        return sorted({*chosen, *include}, key=lambda n: self.partition_of.get(n, -1))

    def note_status(self, replies: Iterable[Message]) -> None:
        """Remember which deletion requests each node announced as pending."""
        for message in replies:
            if message.has_error() or protocol.STATUS not in message.content.config_records:
                continue
            status = message.content.config_records[protocol.STATUS]
            self.announced[message.metadata.src_node_id] = [str(r) for r in status.get(protocol.REQUEST_IDS, [])]  # type: ignore[union-attr]

    def sample(self, server_round: int, fraction: float, grid: Grid) -> list[int]:
        """Seeded sample of active nodes (by partition id), reproducible across runs.

        Nodes in ``held_back`` sit out: the model already forgot their samples, but until the
        node confirms the commit it would still train on them.
        """
        online = set(self.active_nodes(grid)) - self.held_back
        known = sorted((pid, nid) for nid, pid in self.partition_of.items() if nid in online)
        if fraction >= 1.0:
            return [nid for _, nid in known]
        count = max(1, round(fraction * len(known)))
        picked = random.Random(self.config.seed * 100_003 + server_round).sample(known, count)
        return [nid for _, nid in sorted(picked)]

    # --------------------------------------------------------------------------- hooks
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Seeded sampling; each message carries the config and the node's round weights."""
        round_config = ConfigRecord({**dict(config), protocol.SERVER_ROUND: server_round})
        nodes = self.sample(server_round, self.fraction_train, grid)
        self.last_train_nodes = list(nodes)
        log(INFO, "configure_train: round %d, %d of %d clients", server_round, len(nodes), len(self.partition_of))
        return [self.build_message(n, protocol.TRAIN, arrays=arrays, config=round_config) for n in nodes]

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Evaluation messages also deliver the weights of the round just aggregated."""
        if self.fraction_evaluate == 0.0:
            return []
        round_config = ConfigRecord({**dict(config), protocol.SERVER_ROUND: server_round})
        nodes = self.sample(server_round, self.fraction_evaluate, grid)
        return [self.build_message(n, protocol.EVALUATE, arrays=arrays, config=round_config) for n in nodes]

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Drop invalid replies, FedAvg the rest, and remember each node's weight."""
        replies = list(replies)
        self.note_status(replies)
        valid = self.valid_train_replies(replies)
        self.last_train_replies = valid
        for node in self.last_train_nodes:  # trained but left out (error, timeout, invalid): its update
            self.round_weights.setdefault(self.partition_of.get(node, -1), {})[server_round] = 0.0  # weight 0
        if not valid:
            return None, None
        # Replies arrive in any order; summing floats in a fixed order makes the same seed give the same model.
        valid.sort(key=lambda m: self.partition_of.get(m.metadata.src_node_id, -1))
        arrays, metrics = super().aggregate_train(server_round, valid)
        counts = [_num_examples(m) or 0.0 for m in valid]
        for message, weight in zip(valid, fedavg_weights(counts), strict=True):
            pid = self.partition_of.get(message.metadata.src_node_id, -1)
            self.round_weights.setdefault(pid, {})[server_round] = weight
        return arrays, metrics

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """FedAvg of client metrics (clients without retained data left out); notes announcements."""
        replies = sorted(replies, key=lambda m: self.partition_of.get(m.metadata.src_node_id, -1))
        self.note_status(replies)
        usable = [m for m in replies if m.has_error() or _num_examples(m) > 0]
        problems = _eval_problems([m for m in usable if not m.has_error()])
        for message, problem in problems.items():
            log(WARNING, "Leaving out evaluate reply of node %d: %s", message.metadata.src_node_id, problem)
        return super().aggregate_evaluate(server_round, [m for m in usable if m not in problems])

    def valid_train_replies(self, replies: list[Message]) -> list[Message]:
        """Replies fit to aggregate; errors and malformed content are logged and left out."""
        valid: list[Message] = []
        for message in replies:
            if not message.has_error() and _reports_no_data(message):
                log(INFO, "Node %d has no retained data this round; left out", message.metadata.src_node_id)
                continue
            problems = self.reply_problems(message)
            if problems:
                log(WARNING, "Leaving out reply of node %d: %s", message.metadata.src_node_id, "; ".join(problems))
            else:
                valid.append(message)
        return valid

    def reply_problems(self, message: Message) -> list[str]:
        """Why a train reply cannot be aggregated (empty list: it can)."""
        if message.has_error():
            return [f"client error: {message.error.reason}"]
        content = message.content
        # Exactly one of each, as FedAvg's consistency check demands (else it fails the whole round).
        if list(content.array_records) != [protocol.ARRAYS] or list(content.metric_records) != [protocol.METRICS]:
            return [f"expected records '{protocol.ARRAYS}' and '{protocol.METRICS}', got {list(content.keys())}"]
        metrics = content.metric_records[protocol.METRICS]
        count = metrics.get(protocol.NUM_EXAMPLES)
        if not isinstance(count, (int, float)) or not math.isfinite(count) or count <= 0:
            return [f"'{protocol.NUM_EXAMPLES}' must be a positive number, got {count!r}"]
        return check_state(content.array_records[protocol.ARRAYS].to_torch_state_dict(), self.reference_keys)


def _reports_no_data(message: Message) -> bool:
    """Whether a reply says ``num-examples == 0`` (a client left without retained data)."""
    metrics = message.content.metric_records.get(protocol.METRICS)
    return metrics is not None and metrics.get(protocol.NUM_EXAMPLES) == 0


def _num_examples(message: Message) -> float:
    """Return a reply's positive finite ``num-examples``, else 0 (missing record or key, NaN, wrong type)."""
    metrics = message.content.metric_records.get(protocol.METRICS)
    count = metrics.get(protocol.NUM_EXAMPLES) if metrics is not None else None
    return float(count) if isinstance(count, (int, float)) and math.isfinite(count) and count > 0 else 0.0


def _eval_problems(replies: list[Message]) -> dict[Message, str]:
    """Evaluate replies FedAvg cannot average (it would fail the whole round on inconsistent
    records): not exactly one ``metrics`` record, a non-finite or non-numeric metric, or a
    set of metric keys other than the one most replies have."""
    problems: dict[Message, str] = {}
    for message in replies:
        metrics = message.content.metric_records
        if list(metrics) != [protocol.METRICS]:
            problems[message] = f"expected one metric record '{protocol.METRICS}', got {list(metrics)}"
            continue
        bad = [
            k
            for k, v in metrics[protocol.METRICS].items()
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)
        ]
        if bad:
            problems[message] = f"non-finite or non-numeric metrics {bad}"
    keysets = Counter(frozenset(m.content.metric_records[protocol.METRICS]) for m in replies if m not in problems)
    if keysets:
        common = keysets.most_common(1)[0][0]
        for message in replies:
            if message not in problems and frozenset(message.content.metric_records[protocol.METRICS]) != common:
                keys = sorted(message.content.metric_records[protocol.METRICS])
                problems[message] = f"metric keys {keys}, expected {sorted(common)}"
    return problems
