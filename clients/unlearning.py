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


def fisher(message: Message, context: Context) -> Message:
    """A remaining client's diagonal Fisher on its retained data (saliency mask input)."""
    site = open_site(message, context)
    values, count = su.remain_fisher(site, global_state(message))
    content = RecordDict(
        {protocol.ARRAYS: tensors_record(values), protocol.METRICS: MetricRecord({protocol.NUM_EXAMPLES: count})}
    )
    return Message(content, reply_to=message)


def forget(message: Message, context: Context) -> Message:
    """The forgetting client's verdict on the weights it got, and its fast change from them.

    The reply says whether the criterion holds (``passed``) with its figures, whether the
    client keeps any data (``num-retained`` is 1 or 0, never a count), and the change.
    """
    site = open_site(message, context)
    request = requested(site, message)
    remain = message.content.array_records.get(protocol.REMAIN_FISHER)
    config = message.content.config_records[protocol.CONFIG]
    trained = config.get(protocol.TRAINED_ROUNDS)
    fisher = None
    if remain is not None:
        count = float(config.get(protocol.REMAIN_FISHER_COUNT, 1.0))  # type: ignore[arg-type]
        fisher = su.RemainFisher(dict(remain.to_torch_state_dict()), count)
    result = su.fast_correction(
        site,
        global_state(message),
        request,
        outer_step=config_int(message, protocol.STEP),
        remain_fisher=fisher,
        trained_rounds=None if trained is None else frozenset(int(r) for r in trained),  # type: ignore[union-attr]
    )
    cost = result.correction.cost
    metrics = MetricRecord(
        {
            protocol.PASSED: int(result.check.passed),
            **{f"{protocol.CHECK_PREFIX}{k}": v for k, v in result.check.figures.items()},
            protocol.NUM_RETAINED: int(result.num_retained > 0),
            protocol.CLASS_LEVEL: int(request.kind == "class"),
            protocol.FORWARD_BACKWARD: cost.forward_backward,
            protocol.EXAMPLES: cost.examples,
            protocol.HISTORY_STEPS: cost.history_steps,
            protocol.SECONDS: cost.seconds,
        }
    )
    content = RecordDict({protocol.ARRAYS: tensors_record(result.correction.delta), protocol.METRICS: metrics})
    return Message(content, reply_to=message)


def remain(message: Message, context: Context) -> Message:
    """K CE steps on retained data from the fast weights (a requester leaves its D_f out), with
    the method's own SGD when the message names one; with ``want-fisher`` also the Fisher
    diagonal of the retained data at the weights received (the next step's saliency mask)."""
    site = open_site(message, context)
    exclude = None
    config = message.content.config_records[protocol.CONFIG]
    if protocol.EXCLUDE_REQUEST in config:
        request = requested(site, message, protocol.EXCLUDE_REQUEST)
        exclude = su.resolve_request(site, request)
    optimizer = None
    if protocol.REMAIN_LR in config:
        keys = (protocol.REMAIN_LR, protocol.REMAIN_MOMENTUM, protocol.REMAIN_WEIGHT_DECAY)
        optimizer = tuple(float(config[k]) for k in keys)  # type: ignore[arg-type]
    state = global_state(message)
    delta, count = su.remain_correction(
        site,
        state,
        steps=config_int(message, protocol.REMAIN_STEPS),
        seed=config_int(message, protocol.SEED),
        exclude=exclude,
        optimizer=optimizer,  # type: ignore[arg-type]
    )
    content = RecordDict(
        {protocol.ARRAYS: tensors_record(delta), protocol.METRICS: MetricRecord({protocol.NUM_EXAMPLES: count})}
    )
    if config.get(protocol.WANT_FISHER, 0) and count > 0:
        content[protocol.REMAIN_FISHER] = tensors_record(su.remain_fisher(site, state, exclude=exclude)[0])
    return Message(content, reply_to=message)


def verify(message: Message, context: Context) -> Message:
    """The criterion on the weights sent, with its figures, and RA on what this client keeps."""
    site = open_site(message, context)
    _, figures = su.verify(site, global_state(message), requested(site, message))
    return Message(RecordDict({protocol.METRICS: MetricRecord(dict(figures))}), reply_to=message)


def commit(message: Message, context: Context) -> Message:
    """End of a phase: commit the request if the weights sent pass this site's criterion
    (or, without weights, as the server asks); or, when the server reports the phase
    failed (``outcome`` "failed"), keep the request pending with the server's reason.

    The reply says ``verified`` (1: committed, receipt attached; 0: refused, the check's
    figures attached, the request stays pending with the reason).
    """
    site = open_site(message, context)
    request = requested(site, message)
    config = message.content.config_records[protocol.CONFIG]
    if config.get(protocol.OUTCOME, protocol.OUTCOME_SERVED) == protocol.OUTCOME_FAILED:
        updated = site.queue.record_failure(request.request_id, str(config_value(message, protocol.REASON)))
        metrics = MetricRecord({protocol.ATTEMPTS: updated.attempts})
        return Message(RecordDict({protocol.METRICS: metrics, protocol.STATUS: status_record(site)}), reply_to=message)
    if request.status == "served":  # a repeated commit (its ack was lost) changes nothing
        receipt, purged = site.queue.receipt(request.request_id), 0
    else:
        draft = DeletionReceipt.from_json(json.loads(str(config_value(message, protocol.RECEIPT_JSON))))
        state = global_state(message) if protocol.ARRAYS in message.content.array_records else None
        tentative = bool(config.get(protocol.TENTATIVE, 0))
        result = su.commit(site, request, draft, state=state, record_failure=not tentative)
        if result.receipt is None:
            assert result.check is not None
            figures = {f"{protocol.CHECK_PREFIX}{k}": v for k, v in result.check.figures.items()}
            metrics = MetricRecord({protocol.VERIFIED: 0, **figures})
            return Message(
                RecordDict({protocol.METRICS: metrics, protocol.STATUS: status_record(site)}), reply_to=message
            )
        receipt, purged = result.receipt, result.purged
    content = RecordDict(
        {
            protocol.METRICS: MetricRecord({protocol.VERIFIED: 1, protocol.PURGED_STEPS: purged}),
            protocol.RECEIPT: ConfigRecord({protocol.RECEIPT_JSON: json.dumps(receipt.server_copy())}),
            protocol.STATUS: status_record(site),
        }
    )
    return Message(content, reply_to=message)
