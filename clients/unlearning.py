"""ClientApp handlers of an unlearning phase: decode, call ``fedunlearn.site_unlearning``, encode.

Registered on the ClientApp in ``clients.client_app`` as ``query.fisher``, ``train.forget``,
``train.remain``, ``evaluate.verify`` and ``query.commit``.
"""

from __future__ import annotations

import json

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict

from clients.common import (
    config_int,
    config_value,
    global_state,
    open_site,
    requested,
    status_record,
    tensors_record,
)
from fedunlearn import protocol
from fedunlearn import site_unlearning as su
from fedunlearn.deletion import DeletionReceipt
from fedunlearn.snapshots import restore_state, snapshot_state


def fisher(message: Message, context: Context) -> Message:
    """A remaining client's diagonal Fisher on its retained data (saliency mask input)."""
    site = open_site(message, context)
    values, count = su.remain_fisher(site, global_state(message))
    content = RecordDict(
        {protocol.ARRAYS: tensors_record(values), protocol.METRICS: MetricRecord({protocol.NUM_EXAMPLES: count})}
    )
    return Message(content, reply_to=message)


def forget(message: Message, context: Context) -> Message:
    """The forgetting client's fast correction for one outer step."""
    site = open_site(message, context)
    request = requested(site, message)
    remain = message.content.array_records.get(protocol.REMAIN_FISHER)
    result = su.fast_correction(
        site,
        global_state(message),
        request,
        outer_step=config_int(message, protocol.STEP),
        remain_fisher=dict(remain.to_torch_state_dict()) if remain is not None else None,
    )
    cost = result.correction.cost
    metrics = MetricRecord(
        {
            protocol.NUM_EXAMPLES: result.num_forget,
            protocol.NUM_RETAINED: result.num_retained,
            protocol.FA_BEFORE: result.fa_before,
            protocol.FORWARD_BACKWARD: cost.forward_backward,
            protocol.HISTORY_STEPS: cost.history_steps,
            protocol.SECONDS: cost.seconds,
        }
    )
    content = RecordDict({protocol.ARRAYS: tensors_record(result.correction.delta), protocol.METRICS: metrics})
    return Message(content, reply_to=message)


def remain(message: Message, context: Context) -> Message:
    """K CE steps on retained data from the fast weights (the forgetting client leaves D_f out)."""
    site = open_site(message, context)
    exclude = None
    config = message.content.config_records[protocol.CONFIG]
    if protocol.EXCLUDE_REQUEST in config:
        request = requested(site, message, protocol.EXCLUDE_REQUEST)
        exclude = su.resolve_request(site, request)
    delta, count = su.remain_correction(
        site,
        global_state(message),
        steps=config_int(message, protocol.REMAIN_STEPS),
        seed=config_int(message, protocol.SEED),
        exclude=exclude,
    )
    content = RecordDict(
        {protocol.ARRAYS: tensors_record(delta), protocol.METRICS: MetricRecord({protocol.NUM_EXAMPLES: count})}
    )
    return Message(content, reply_to=message)


def verify(message: Message, context: Context) -> Message:
    """FA, MIA (forgotten samples) and RA (kept samples) of the unlearned weights."""
    site = open_site(message, context)
    result = su.verify(site, global_state(message), requested(site, message), seed=site.config.seed)
    metrics = MetricRecord({protocol.NUM_EXAMPLES: int(result.pop("num_forget")), **result})
    return Message(RecordDict({protocol.METRICS: metrics}), reply_to=message)


def commit(message: Message, context: Context) -> Message:
    """End of a phase: mark the request served with the server's receipt and purge the spent
    history; or, when the server reports the phase failed (``outcome`` "failed"), keep the
    request pending and remember the server's reason."""
    site = open_site(message, context)
    request = requested(site, message)
    config = message.content.config_records[protocol.CONFIG]
    if config.get(protocol.OUTCOME, protocol.OUTCOME_SERVED) == protocol.OUTCOME_FAILED:
        updated = site.queue.record_failure(request.request_id, str(config_value(message, protocol.REASON)))
        metrics = MetricRecord({protocol.ATTEMPTS: updated.attempts})
        return Message(RecordDict({protocol.METRICS: metrics, protocol.STATUS: status_record(site)}), reply_to=message)
    if request.status == "served":  # a repeated commit (its ack was lost) changes nothing
        receipt = site.queue.receipt(request.request_id)
        purged = 0
    else:
        receipt, purged = su.commit(
            site, request, DeletionReceipt(**json.loads(str(config_value(message, protocol.RECEIPT_JSON))))
        )
    content = RecordDict(
        {
            protocol.METRICS: MetricRecord({protocol.PURGED_STEPS: purged}),
            protocol.RECEIPT: ConfigRecord({protocol.RECEIPT_JSON: json.dumps(receipt.to_json())}),
            protocol.STATUS: status_record(site),
        }
    )
    return Message(content, reply_to=message)


def snapshot(message: Message, context: Context) -> Message:
    """Benchmarks: save this client's state (history, requests, receipts) under a name."""
    site = open_site(message, context)
    snapshot_state(site.state_dir, str(config_value(message, protocol.SNAPSHOT_NAME)))
    return Message(RecordDict({protocol.STATUS: status_record(site)}), reply_to=message)


def restore(message: Message, context: Context) -> Message:
    """Benchmarks: put this client's state back to a saved snapshot."""
    site = open_site(message, context, apply_schedule=False)
    restore_state(site.state_dir, str(config_value(message, protocol.SNAPSHOT_NAME)))
    return Message(RecordDict({protocol.STATUS: status_record(site)}), reply_to=message)
