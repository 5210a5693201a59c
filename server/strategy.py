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

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fedunlearn import protocol
from fedunlearn.aggregation import check_state, fedavg_weights
from fedunlearn.config import FederationConfig


class UnlearningFedAvg(FedAvg):
    """FedAvg that tells clients their aggregation weights and validates every reply."""

    def __init__(self, config: FederationConfig, *, reference: ArrayRecord) -> None:
        num_clients = config.data.num_clients
        super().__init__(
            fraction_train=config.fraction_train,
            fraction_evaluate=config.fraction_evaluate,
            min_train_nodes=max(1, round(config.fraction_train * num_clients)),
            min_evaluate_nodes=max(0, round(config.fraction_evaluate * num_clients)),
            min_available_nodes=num_clients,
            weighted_by_key=protocol.NUM_EXAMPLES,
            arrayrecord_key=protocol.ARRAYS,
            configrecord_key=protocol.CONFIG,
        )
        self.config = config
        self.reference_keys = reference.to_torch_state_dict()
        self.partition_of: dict[int, int] = {}  # Flower node_id -> our partition_id
        self.round_weights: dict[int, dict[int, float]] = {}  # node_id -> round -> w_k^r
        self.last_train_replies: list[Message] = []
        self.last_train_nodes: list[int] = []  # nodes sent a train message in the current round
        self.announced: dict[int, list[str]] = {}  # node_id -> pending request ids it announced
        self.departed: set[int] = set()  # nodes whose client-level deletion was served
        self.held_back: set[int] = set()  # nodes that have not yet confirmed a served deletion

    # ---------------------------------------------------------------- message construction
    def federation_record(self) -> ConfigRecord:
        """The run's config as sent to clients (they build the same dataclasses from it)."""
        return ConfigRecord(dict(self.config.to_run_config()))

    def weights_record(self, node_id: int) -> ConfigRecord:
        """All FedAvg weights this node's updates had so far (idempotent on the client)."""
        weights = self.round_weights.get(node_id, {})
        rounds = sorted(weights)
        return ConfigRecord({protocol.ROUNDS: rounds, protocol.WEIGHTS: [weights[r] for r in rounds]})

    def build_message(
        self, node_id: int, message_type: str, *, arrays: ArrayRecord | None, config: ConfigRecord
    ) -> Message:
        """One message with the federation config and the node's round weights attached."""
        content = RecordDict(
            {
                protocol.CONFIG: ConfigRecord(dict(config)),
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
            (pid, nid) for nid, pid in self.partition_of.items() if nid in online and nid not in self.departed
        )
        return [nid for _, nid in pairs]

    def sample_remaining(self, remaining: list[int], step: int, *, include: int | None) -> list[int]:
        """Remaining clients for one slow step (``remain_fraction``, seeded), plus ``include``
        (the forgetting client, which corrects on its own retained data too)."""
        fraction = self.config.unlearn.remain_fraction
        chosen = list(remaining)
        if fraction < 1.0 and remaining:
            count = max(1, round(fraction * len(remaining)))
            chosen = sorted(random.Random(self.config.seed * 31 + step).sample(remaining, count))
        return chosen + ([include] if include is not None else [])

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
            self.round_weights.setdefault(node, {})[server_round] = 0.0  # is not in the model, weight 0
        if not valid:
            return None, None
        arrays, metrics = super().aggregate_train(server_round, valid)
        counts = [_num_examples(m) or 0.0 for m in valid]
        for message, weight in zip(valid, fedavg_weights(counts), strict=True):
            self.round_weights.setdefault(message.metadata.src_node_id, {})[server_round] = weight
        return arrays, metrics

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """FedAvg of client metrics (clients without retained data left out); notes announcements."""
        replies = list(replies)
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
