"""The Flower ClientApp: decode a Message, call the client's ``ClientSite``, encode the reply.

No algorithm lives here: FedAvg rounds call ``fedunlearn.site``, unlearning phases
``fedunlearn.site_unlearning`` (through ``clients.unlearning``). ``app`` is what SuperNodes
run, in simulations and deployments alike: it has no simulation feature (a simulation files
its scheduled requests on the clients' disks, as a data officer would, before the run).
"""

from __future__ import annotations

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from clients import unlearning
from clients.common import fault_injection_mod, global_state, open_site, reply_errors, server_round, status_record
from fedunlearn import protocol
from fedunlearn.unlearning import get_method


def status(message: Message, context: Context) -> Message:
    """Handshake / poll: partition id and pending deletion requests."""
    site = open_site(message, context)
    return Message(RecordDict({protocol.STATUS: status_record(site)}), reply_to=message)


def train(message: Message, context: Context) -> Message:
    """One FedAvg round of local training with history recording."""
    site = open_site(message, context)
    dense = get_method(site.config.unlearn.method).traits.history == "dense"  # the method reads it: record it
    outcome = site.train_round(global_state(message), server_round=server_round(message), record_full=dense)
    metrics = MetricRecord(
        {
            protocol.NUM_EXAMPLES: outcome.train.num_examples,
            protocol.TRAIN_LOSS: outcome.train.mean_loss,
            protocol.TRAIN_STEPS: outcome.train.steps,
            protocol.EXAMPLES: outcome.train.examples,
            protocol.PENDING_DELETIONS: len(site.queue.pending()),
            protocol.HISTORY_BYTES: outcome.usage.disk_bytes,
            protocol.HISTORY_DENSE_BYTES: outcome.usage.dense_bytes,
            protocol.HISTORY_ROUND_BYTES: outcome.round_bytes,
        }
    )
    content = RecordDict(
        {protocol.ARRAYS: ArrayRecord(outcome.state), protocol.METRICS: metrics, protocol.STATUS: status_record(site)}
    )
    return Message(content, reply_to=message)


def evaluate(message: Message, context: Context) -> Message:
    """Loss and accuracy of the global weights on this client's retained data."""
    site = open_site(message, context)
    result = site.evaluate(global_state(message))
    metrics = MetricRecord(
        {
            protocol.NUM_EXAMPLES: result.num_examples,
            protocol.EVAL_LOSS: result.loss,
            protocol.EVAL_ACCURACY: result.accuracy,
        }
    )
    return Message(RecordDict({protocol.METRICS: metrics, protocol.STATUS: status_record(site)}), reply_to=message)


def build_client_app() -> ClientApp:
    """The ClientApp with every fedunlearn action.

    ``fault_injection_mod`` is a test hook that passes every message on unless a fault plan
    is explicitly enabled (see fedunlearn/faults.py).
    """
    client = ClientApp(mods=[fault_injection_mod])
    client.query("status")(reply_errors(status))
    client.train()(reply_errors(train))
    client.evaluate()(reply_errors(evaluate))
    client.query("fisher")(reply_errors(unlearning.fisher))
    client.train("forget")(reply_errors(unlearning.forget))
    client.train("remain")(reply_errors(unlearning.remain))
    client.evaluate("verify")(reply_errors(unlearning.verify))
    client.query("commit")(reply_errors(unlearning.commit))
    return client


app = build_client_app()
