"""The client side of the kill test: a process that serves one site through ``fedunlearn.site``
and ``fedunlearn.site_unlearning`` (what the ClientApp calls), commanded over a pipe.

The test's main process plays the server and the data owner; it kills this process with
SIGKILL at random moments (or, with ``die_at``, at exactly the k-th ``os.replace``: the commit
point of an atomic write) and starts a new one on the same state directory. Every command
re-opens nothing but what a ClientApp handler would: the site, then finishing any commit a
crash interrupted, then the work.
"""

from __future__ import annotations

import io
import json
import os
import signal
import traceback
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import torch
from flwr.common.config import unflatten_dict

from fedunlearn import site_unlearning as su
from fedunlearn.atomic import write_bytes_atomic
from fedunlearn.config import FederationConfig
from fedunlearn.deletion import DeletionReceipt, DeletionRequest
from fedunlearn.run_config import config_from_sections
from fedunlearn.site import ClientSite


def config_of(run_config: dict[str, Any]) -> FederationConfig:
    """The federation config of flat dotted run-config keys (as the ClientApp reads them)."""
    return config_from_sections(unflatten_dict(dict(run_config)))


def save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> str:
    """Write tensors atomically (the 'message' between the processes); return the path."""
    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in tensors.items()}, buffer)
    write_bytes_atomic(path, buffer.getvalue())
    return str(path)


def load_tensors(path: str) -> dict[str, torch.Tensor]:
    """Read tensors written by ``save_tensors``."""
    loaded: dict[str, torch.Tensor] = torch.load(path, weights_only=True)
    return loaded


def serve(
    conn: Connection,
    run_config: dict[str, Any],
    state_dir: str,
    exchange_dir: str,
    die_at_start: tuple[int, str] | None = None,
) -> None:
    """Process entry point: open the site and finish interrupted commits (``die_at_start``
    kills it in there), then answer commands until the pipe closes."""
    torch.set_num_threads(1)
    config = config_of(run_config)
    _arm(die_at_start)
    site = ClientSite.open(config=config, partition_id=0, state_dir=state_dir, lineage="kill-test")
    su.resume_commits(site)
    _arm(None)
    conn.send({"ok": True, "ready": True})
    while True:
        try:
            command = conn.recv()
        except EOFError:
            return
        _arm(command.get("die_at"))
        try:
            su.resume_commits(site)  # as every ClientApp handler does (clients.common.open_site)
            reply = {"ok": True, **HANDLERS[command["op"]](site, command, Path(exchange_dir))}
        except Exception as err:  # noqa: BLE001 - reported to the 'server' like an error reply
            reply = {"ok": False, "error": f"{type(err).__name__}: {err}", "trace": traceback.format_exc(limit=4)}
        _arm(None)
        conn.send(reply)


_REAL_REPLACE = os.replace


def _arm(die_at: tuple[int, str] | None) -> None:
    """Make this process SIGKILL itself right before or after its k-th ``os.replace``."""
    if die_at is None:
        os.replace = _REAL_REPLACE
        return
    target, when = die_at
    calls = [0]

    def replace(src: Any, dst: Any) -> None:
        calls[0] += 1
        if calls[0] == target and when == "before":
            os.kill(os.getpid(), signal.SIGKILL)
        _REAL_REPLACE(src, dst)
        if calls[0] == target and when == "after":
            os.kill(os.getpid(), signal.SIGKILL)

    os.replace = replace  # type: ignore[assignment]


def _weights(site: ClientSite, command: dict[str, Any]) -> None:
    weights: dict[str, float] = command.get("weights", {})
    site.record_round_weights([int(r) for r in weights], [float(w) for w in weights.values()])


def _submit(site: ClientSite, command: dict[str, Any], exchange: Path) -> dict[str, Any]:
    site.queue.submit(DeletionRequest.from_json(command["request"]))
    return {}


def _train(site: ClientSite, command: dict[str, Any], exchange: Path) -> dict[str, Any]:
    _weights(site, command)
    outcome = site.train_round(load_tensors(command["global"]), server_round=command["round"])
    path = save_tensors(exchange / f"train-{command['round']}.pt", outcome.state)
    return {"state": path, "num_examples": outcome.train.num_examples, "pending": _pending(site)}


def _forget(site: ClientSite, command: dict[str, Any], exchange: Path) -> dict[str, Any]:
    _weights(site, command)
    request = site.queue.get(command["request_id"])
    result = su.fast_correction(
        site,
        load_tensors(command["global"]),
        request,
        outer_step=0,
        remain_fisher=None,
        trained_rounds=frozenset(int(r) for r in command.get("trained_rounds", [])),
    )
    return {"delta": save_tensors(exchange / f"delta-{request.request_id}.pt", result.correction.delta)}


def _verify(site: ClientSite, command: dict[str, Any], exchange: Path) -> dict[str, Any]:
    request = site.queue.get(command["request_id"])
    _, figures = su.verify(site, load_tensors(command["theta"]), request)
    return {"metrics": figures}


def _commit(site: ClientSite, command: dict[str, Any], exchange: Path) -> dict[str, Any]:
    """Commit as asked (the campaign's server does not send the weights: its criterion is not
    what the campaign tests); the server gets its copy of the receipt, as from the ClientApp."""
    request = site.queue.get(command["request_id"])
    if request.status == "served":  # a repeated commit changes nothing (as clients.unlearning.commit)
        return {"receipt": site.queue.receipt(request.request_id).server_copy()}
    result = su.commit(site, request, DeletionReceipt.from_json(command["receipt"]))
    assert result.receipt is not None  # an unjudged commit always commits
    return {"receipt": result.receipt.server_copy()}


def _fail(site: ClientSite, command: dict[str, Any], exchange: Path) -> dict[str, Any]:
    site.queue.record_failure(command["request_id"], command["reason"])
    return {}


def _status(site: ClientSite, command: dict[str, Any], exchange: Path) -> dict[str, Any]:
    return {"pending": _pending(site)}


def _pending(site: ClientSite) -> list[str]:
    return [r.request_id for r in site.queue.pending()]


HANDLERS = {
    "submit": _submit,
    "train": _train,
    "forget": _forget,
    "verify": _verify,
    "commit": _commit,
    "fail": _fail,
    "status": _status,
}


def describe(reply: dict[str, Any]) -> str:
    """One line for logs."""
    return json.dumps({k: v for k, v in reply.items() if k != "trace"})[:300]
