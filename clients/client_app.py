"""The Flower ClientApp: decode a Message, call the client's ``ClientSite``, encode the reply.

No algorithm lives here; see ``fedunlearn.site`` for what each action does.
"""

from __future__ import annotations

import dataclasses
import functools
import traceback
from collections.abc import Callable
from logging import WARNING

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common import log

from fedunlearn import protocol
from fedunlearn.config import FederationConfig, NodeConfig
from fedunlearn.errors import FedUnlearnError
from fedunlearn.site import ClientSite

#: Flower error code for a client-side fedunlearn error (the reason carries the message).
FEDUNLEARN_ERROR_CODE = 100

app = ClientApp()
Handler = Callable[[Message, Context], Message]


def open_site(message: Message, context: Context) -> ClientSite:
    """The site this node serves, configured by the server's federation record and the
    node's own ``node_config``; also stores any FedAvg round weights the message carries."""
    federation = FederationConfig.from_run_config(dict(message.content[protocol.FEDERATION]))
    node = NodeConfig.from_node_config(dict(context.node_config))
    if node.num_partitions != federation.data.num_clients:
        raise FedUnlearnError(
            f"node_config num-partitions={node.num_partitions} but the federation has "
            f"num-clients={federation.data.num_clients}; make them agree"
        )
    if node.data_root is not None:
        federation = dataclasses.replace(federation, data=dataclasses.replace(federation.data, root=node.data_root))
    if federation.client_threads > 0:
        torch.set_num_threads(federation.client_threads)
    site = ClientSite.open(
        config=federation, partition_id=node.partition_id,
        state_dir=node.resolved_state_dir(federation), lineage=f"run-{context.run_id}",
    )
    weights = message.content.config_records.get(protocol.ROUND_WEIGHTS)
    if weights is not None:
        site.record_round_weights(list(weights[protocol.ROUNDS]), list(weights[protocol.WEIGHTS]))  # type: ignore[arg-type]
    return site


def status_record(site: ClientSite) -> ConfigRecord:
    """Announced in every reply: who this is and which deletion requests wait."""
    pending = [r.request_id for r in site.queue.pending()]
    return ConfigRecord({protocol.PARTITION_ID: site.partition_id, protocol.REQUEST_IDS: pending})


def reply_errors(handler: Handler) -> Handler:
    """Turn a fedunlearn error into an error reply with a readable reason (the server logs
    it and leaves this node out), instead of a bare traceback."""

    @functools.wraps(handler)
    def wrapper(message: Message, context: Context) -> Message:
        try:
            return handler(message, context)
        except FedUnlearnError as err:
            log(WARNING, "fedunlearn client error (%s): %s", type(err).__name__, err)
            reason = f"{type(err).__name__}: {err}\n{traceback.format_exc(limit=3)}"
            return Message(Error(code=FEDUNLEARN_ERROR_CODE, reason=reason), reply_to=message)

    return wrapper


@app.query("status")
@reply_errors
def status(message: Message, context: Context) -> Message:
    """Handshake / poll: partition id and pending deletion requests."""
    site = open_site(message, context)
    return Message(RecordDict({protocol.STATUS: status_record(site)}), reply_to=message)


@app.train()
@reply_errors
def train(message: Message, context: Context) -> Message:
    """One FedAvg round of local training with history recording."""
    site = open_site(message, context)
    server_round = int(message.content[protocol.CONFIG][protocol.SERVER_ROUND])  # type: ignore[arg-type]
    outcome = site.train_round(message.content[protocol.ARRAYS].to_torch_state_dict(), server_round=server_round)
    metrics = MetricRecord({
        protocol.NUM_EXAMPLES: outcome.train.num_examples,
        protocol.TRAIN_LOSS: outcome.train.mean_loss,
        protocol.PENDING_DELETIONS: len(site.queue.pending()),
        protocol.HISTORY_BYTES: outcome.usage.disk_bytes,
        protocol.HISTORY_DENSE_BYTES: outcome.usage.dense_bytes,
        protocol.HISTORY_ROUND_BYTES: outcome.round_bytes,
    })
    content = RecordDict({protocol.ARRAYS: ArrayRecord(outcome.state), protocol.METRICS: metrics,
                          protocol.STATUS: status_record(site)})
    return Message(content, reply_to=message)


@app.evaluate()
@reply_errors
def evaluate(message: Message, context: Context) -> Message:
    """Loss and accuracy of the global weights on this client's retained data."""
    site = open_site(message, context)
    result = site.evaluate(message.content[protocol.ARRAYS].to_torch_state_dict())
    metrics = MetricRecord({protocol.NUM_EXAMPLES: result.num_examples, protocol.EVAL_LOSS: result.loss,
                            protocol.EVAL_ACCURACY: result.accuracy})
    return Message(RecordDict({protocol.METRICS: metrics, protocol.STATUS: status_record(site)}), reply_to=message)
