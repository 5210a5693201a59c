"""What every fedunlearn ClientApp handler shares: opening the site, status, error replies."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import re
import time
import traceback
from collections.abc import Callable
from logging import ERROR, WARNING

import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord
from flwr.common import log
from flwr.common.config import unflatten_dict

from fedunlearn import faults, protocol
from fedunlearn.config import NodeConfig
from fedunlearn.deletion import DeletionRequest, UnknownRequestError
from fedunlearn.errors import DeletionRequestError, FedUnlearnError, UnlearningError
from fedunlearn.run_config import config_from_sections
from fedunlearn.site import ClientSite
from fedunlearn.site_unlearning import resume_commits

#: Flower error code for a client-side fedunlearn error (the reason carries the message).
FEDUNLEARN_ERROR_CODE = 100
#: Flower error code for an unexpected exception in a handler (the reason names its class only).
INTERNAL_ERROR_CODE = 101
#: Flower error code the test fault hook uses for a reply it drops (the server treats it as a lost reply).
LOST_REPLY_CODE = 102

Handler = Callable[[Message, Context], Message]


def open_site(message: Message, context: Context) -> ClientSite:
    """The site this node serves, configured by the server's federation record and the
    node's own ``node_config``; also stores any FedAvg round weights the message carries.

    The site is opened once per process for a given run config, node config and lineage
    (loading its data share, finishing any commit a crash interrupted); later messages only
    look it up.
    """
    record = message.content.config_records[protocol.FEDERATION]
    config_key = hashlib.sha256(json.dumps(dict(record), sort_keys=True, default=str).encode()).hexdigest()
    node_key = json.dumps(dict(context.node_config), sort_keys=True, default=str)
    site = _site(config_key, node_key, lineage(message), json.dumps(dict(record), default=str))
    weights = message.content.config_records.get(protocol.ROUND_WEIGHTS)
    if weights is not None and weights:
        site.record_round_weights(list(weights[protocol.ROUNDS]), list(weights[protocol.WEIGHTS]))  # type: ignore[arg-type]
    return site


@functools.lru_cache(maxsize=4)
def _site(config_key: str, node_key: str, lineage_name: str, record_json: str) -> ClientSite:
    """Open a site (cached by ``config_key``, ``node_key`` and the lineage; ``record_json`` is
    the record those keys stand for)."""
    federation = config_from_sections(unflatten_dict(json.loads(record_json)))
    node = NodeConfig.from_node_config(json.loads(node_key))
    if node.data_root is not None:
        federation = dataclasses.replace(federation, data=dataclasses.replace(federation.data, root=node.data_root))
    if federation.train.threads > 0:
        torch.set_num_threads(federation.train.threads)
    site = ClientSite.open(
        config=federation,
        partition_id=node.partition_id,
        num_partitions=node.num_partitions,
        state_dir=node.resolved_state_dir(federation),
        lineage=lineage_name,
    )
    resume_commits(site)  # finish a commit that a crash interrupted, before anything else
    return site


def lineage(message: Message) -> str:
    """The model lineage a message belongs to (its history folder's name on this node)."""
    config = message.content.config_records.get(protocol.CONFIG)
    value = config.get(protocol.LINEAGE, "") if config is not None else ""
    return str(value) or "unnamed"


def status_record(site: ClientSite) -> ConfigRecord:
    """Announced in every reply: who this is, how many partitions it knows of, which requests wait."""
    pending = [r.request_id for r in site.queue.pending()]
    return ConfigRecord(
        {
            protocol.PARTITION_ID: site.partition_id,
            protocol.NUM_PARTITIONS: site.config.data.num_clients,
            protocol.REQUEST_IDS: pending,
        }
    )


def reply_errors(handler: Handler) -> Handler:
    """Turn an error into an error reply (the server logs it and leaves this node out).

    The server gets the error's class and, for errors whose messages never name sample ids,
    its message; errors that can name ids (``PRIVATE_ERRORS``) and unexpected exceptions
    get a fixed text, so no id and no traceback leaves the client. The full error and
    traceback go to the node's own log.
    """

    @functools.wraps(handler)
    def wrapper(message: Message, context: Context) -> Message:
        try:
            return handler(message, context)
        except FedUnlearnError as err:
            log(WARNING, "fedunlearn client error (%s): %s\n%s", type(err).__name__, err, traceback.format_exc(limit=3))
            return Message(Error(code=FEDUNLEARN_ERROR_CODE, reason=server_reason(err)), reply_to=message)
        except Exception as err:  # noqa: BLE001 - its text could hold anything: the server gets the class only
            log(
                ERROR, "unexpected client error handling %s:\n%s", message.metadata.message_type, traceback.format_exc()
            )
            reason = f"{type(err).__name__}: unexpected error on the client (details in the node's log)"
            return Message(Error(code=INTERNAL_ERROR_CODE, reason=reason), reply_to=message)

    return wrapper


#: Errors whose messages may name sample ids (unknown, foreign or already deleted ids, ids
#: missing from the history): the server only learns that the request cannot be served.
PRIVATE_ERRORS: tuple[type[FedUnlearnError], ...] = (DeletionRequestError, UnlearningError)
#: An absolute file path (POSIX or Windows) in an error message: the node's layout is its own.
_PATH = re.compile(r"(?:[A-Za-z]:)?(?:[\\/][\w.@+-]+){2,}[\\/]?")


def server_reason(err: FedUnlearnError) -> str:
    """The reason an error reply carries to the server (never sample ids, never a traceback)."""
    if isinstance(err, UnknownRequestError):
        return (
            f"{type(err).__name__}: this client has no deletion request {err.request_id!r}; requests are filed "
            "only on the owning node (fedunlearn forget)"
        )
    if isinstance(err, PRIVATE_ERRORS):
        return (
            f"{type(err).__name__}: this client cannot serve the request as asked; the reason (it may name "
            "sample ids) stays in the node's log"
        )
    return f"{type(err).__name__}: {_PATH.sub('<path on the node>', str(err))}"


def fault_injection_mod(message: Message, context: Context, call_next: Handler) -> Message:
    """TEST HOOK (see ``fedunlearn.faults``): apply this node's fault plan, if it has one.

    Without a plan (every real node) this only passes the message on. A plan needs both the
    node config / environment entry and the enabling token, else every reply is an error.
    """
    try:
        partition = context.node_config.get("partition-id")
        text = faults.plan_text_for(context.node_config, int(partition) if partition is not None else None)
        if text is None:
            return call_next(message, context)
        injector = faults.FaultInjector(faults.parse_plan(text), _state_dir(message, context))
    except FedUnlearnError as err:
        return Message(Error(code=FEDUNLEARN_ERROR_CODE, reason=f"{type(err).__name__}: {err}"), reply_to=message)
    kind = message.metadata.message_type
    rule = injector.next_fault(kind.split(".")[-1])
    if rule is None:
        return call_next(message, context)
    if rule.action == "error":
        reason = f"FaultInjected: test fault plan failed this {kind} message"
        return Message(Error(code=FEDUNLEARN_ERROR_CODE, reason=reason), reply_to=message)
    if rule.action == "crash":
        raise RuntimeError(f"test fault plan crashed the ClientApp on a {kind} message")
    if rule.action == "hang":
        time.sleep(rule.seconds)
        return call_next(message, context)
    return _corrupt_reply(call_next(message, context), message, rule.action)


def _state_dir(message: Message, context: Context) -> str:
    record = dict(message.content.config_records[protocol.FEDERATION])
    federation = config_from_sections(unflatten_dict(record))
    return NodeConfig.from_node_config(dict(context.node_config)).resolved_state_dir(federation)


def _corrupt_reply(reply: Message, message: Message, action: str) -> Message:
    if reply.has_error():
        return reply
    if action == "lost":
        return Message(Error(code=LOST_REPLY_CODE, reason="reply lost (test fault plan)"), reply_to=message)
    content = reply.content
    if content.array_records:
        for name, record in list(content.array_records.items()):
            arrays = faults.corrupt_arrays({k: v.numpy() for k, v in record.items()}, action)
            content[name] = ArrayRecord({k: Array(v) for k, v in arrays.items()})
    else:
        for name, metrics in list(content.metric_records.items()):
            content[name] = MetricRecord(faults.corrupt_metrics(dict(metrics), action))  # type: ignore[arg-type]
    return reply


def server_round(message: Message) -> int:
    """The round a message belongs to (0 when the server sent none, e.g. the handshake)."""
    config = message.content.config_records.get(protocol.CONFIG)
    value = config.get(protocol.SERVER_ROUND, 0) if config is not None else 0
    return int(value)  # type: ignore[arg-type]


def config_value(message: Message, key: str) -> object:
    """A key of the message's config record; a FedUnlearnError names it when absent."""
    config = message.content.config_records.get(protocol.CONFIG)
    if config is None or key not in config:
        raise FedUnlearnError(f"message {message.metadata.message_type!r} lacks config key {key!r}")
    return config[key]


def config_int(message: Message, key: str) -> int:
    """An integer config value; a FedUnlearnError names the key if it is not a whole number."""
    value = config_value(message, key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or float(value) != int(value):
        raise FedUnlearnError(f"config key {key!r} must be a whole number, got {value!r}")
    return int(value)


def requested(site: ClientSite, message: Message, key: str = protocol.REQUEST_ID) -> DeletionRequest:
    """The deletion request a phase message refers to (it must be this client's own)."""
    return site.queue.get(str(config_value(message, key)))


def global_state(message: Message) -> dict[str, torch.Tensor]:
    """The model weights a message carries."""
    if protocol.ARRAYS not in message.content.array_records:
        raise FedUnlearnError(f"message {message.metadata.message_type!r} carries no '{protocol.ARRAYS}' record")
    return dict(message.content.array_records[protocol.ARRAYS].to_torch_state_dict())


def tensors_record(tensors: dict[str, torch.Tensor]) -> ArrayRecord:
    """An ArrayRecord of CPU tensors (corrections, Fisher diagonals)."""
    return ArrayRecord({k: v.detach().cpu() for k, v in tensors.items()})
