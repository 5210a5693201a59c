"""The kill test's main process: it plays the server (FedAvg rounds, unlearning phases,
receipts) and the data owner (files deletion requests), and SIGKILLs the client process at
random moments, then audits the client's disk and starts a new client process.

The server side follows ``server.phase``: the global model is replaced (write-ahead) before
the commit; a request whose commit reply is missing stays in ``awaiting`` and its commit is
re-sent until the client confirms; a round whose reply never came gets weight 0, and the
forgetting client is told which rounds its update entered the model (``trained_rounds``).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import random
import signal
import statistics
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from multiprocessing import forkserver
from pathlib import Path
from typing import Any

import numpy as np
import torch

from faults.client_process import config_of, load_tensors, save_tensors, serve
from faults.kill_campaign_config import CLIENT_CONFIG
from fedunlearn.aggregation import add_scaled, state_digest
from fedunlearn.data import build_federated_data
from fedunlearn.deletion import DeletionQueue, DeletionReceipt, DeletionRequest
from fedunlearn.errors import FedUnlearnError
from fedunlearn.history import HistoryStore
from fedunlearn.models import build_model

STARTUP_TIMEOUT = 120.0
COMMAND_TIMEOUT = 120.0


@dataclass
class Figures:
    """What a campaign counts (the closing note's figures)."""

    kills: int = 0  # SIGKILLs that hit the client process
    kills_mid_command: int = 0  # ... while it was working on a command (no reply yet)
    kills_at_commit_point: int = 0  # ... right before / after an os.replace (die_at)
    kills_during_recovery: int = 0  # ... while a restarted client finished interrupted commits
    restarts: int = 0
    audits: int = 0
    requests_acknowledged: int = 0
    requests_lost: int = 0
    corrupted_stores: int = 0
    corrupted_request_files: int = 0
    receipt_mismatches: int = 0
    rounds: int = 0
    served: int = 0
    unexpected_errors: list[str] = field(default_factory=list)
    kinds: dict[str, int] = field(default_factory=lambda: defaultdict(int))


def _forkserver() -> Any:
    """The forkserver context, its server started with ``faults.warm_client`` preloaded.

    Python 3.11's forkserver ignores the parent's sys.path when it preloads, so the tests
    folder is put on PYTHONPATH while the server starts.
    """
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["faults.warm_client"])
    saved = os.environ.get("PYTHONPATH")
    tests_dir = str(Path(__file__).resolve().parents[1])
    os.environ["PYTHONPATH"] = os.pathsep.join([tests_dir, *([saved] if saved else [])])
    try:
        forkserver.ensure_running()
    finally:
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved
    return ctx


class ClientProcess:
    """One client process, started from a forkserver that preloaded torch and fedunlearn."""

    def __init__(
        self,
        ctx: Any,
        run_config: dict[str, Any],
        state_dir: Path,
        exchange: Path,
        die_at_start: tuple[int, str] | None,
    ) -> None:
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(
            target=serve, args=(child, run_config, str(state_dir), str(exchange), die_at_start), daemon=True
        )
        self.proc.start()
        child.close()
        self.fired = False

    def wait_reply(self, timeout: float) -> dict[str, Any] | None:
        """The next reply, or None if the process died first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.conn.poll(0.02):
                try:
                    reply: dict[str, Any] = self.conn.recv()
                    return reply
                except (EOFError, OSError):
                    return None
            if not self.proc.is_alive():
                return None
        raise TimeoutError("the client process neither answered nor died")

    def kill(self) -> None:
        self.fired = True
        try:
            os.kill(self.proc.pid or 0, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def stop(self) -> None:
        self.conn.close()
        self.proc.join(5)
        if self.proc.is_alive():
            self.kill()
            self.proc.join(5)


class KillCampaign:
    """Run rounds and deletions against a client that is killed ``kills`` times (seeded)."""

    def __init__(self, root: Path, *, seed: int, kills: int, p_kill: float = 0.35) -> None:
        self.root, self.rng, self.target_kills, self.p_kill = root, random.Random(seed), kills, p_kill
        self.state_dir, self.exchange = root / "client", root / "exchange"
        self.exchange.mkdir(parents=True, exist_ok=True)
        self.run_config = {
            **CLIENT_CONFIG,
            "data.root": str(root / "no-data"),
            "run.seed": seed,
            "run.out-dir": str(root / "server"),
            "run.state-root": str(root / "state"),
        }
        self.config = config_of(self.run_config)
        data = build_federated_data(self.config.data, seed=seed)
        self.all_ids = data.client_train(0).ids()
        self.labels = data.client_train(0).labels.numpy()
        self.input_shape, self.num_classes = data.bundle.input_shape, data.num_classes
        torch.manual_seed(seed)
        self.global_state = self._model().state_dict()
        self.figures = Figures()
        self.weights: dict[int, float] = {}
        self.awaiting: dict[str, dict[str, Any]] = {}
        self.server_receipts: dict[str, dict[str, Any]] = {}
        self.acked: set[str] = set()
        self.unacked: dict[str, DeletionRequest] = {}
        self.claimed: set[int] = set()  # ids named by any request (requests never overlap)
        self.claimed_labels: set[int] = set()
        self.durations: dict[str, list[float]] = defaultdict(lambda: [0.2])
        self.round = 0
        self.next_request = 0
        self.ctx = _forkserver()
        self.client: ClientProcess | None = None

    # ---------------------------------------------------------------- process handling
    def _model(self) -> torch.nn.Module:
        return build_model(self.config.train.model, input_shape=self.input_shape, num_classes=self.num_classes)

    def _start(self, *, may_die: bool) -> None:
        while True:
            die = None
            if may_die and self.rng.random() < 0.3:
                die = (self.rng.randint(1, 3), self.rng.choice(["before", "after"]))
            self.client = ClientProcess(self.ctx, self.run_config, self.state_dir, self.exchange, die)
            self.figures.restarts += 1
            reply = self.client.wait_reply(STARTUP_TIMEOUT)
            if reply is not None and reply.get("ready"):
                return
            self.figures.kills += 1
            self.figures.kills_during_recovery += 1
            self.audit()

    def call(self, op: str, *, killable: bool = True, **payload: Any) -> dict[str, Any] | None:
        """Send one command; None if the client died (then it is audited and restarted)."""
        assert self.client is not None
        kill = killable and len(self._kills_left()) > 0 and self.rng.random() < self.p_kill
        timer, die_at = None, None
        if kill and self.rng.random() < 0.5:
            die_at = (self.rng.randint(1, 8), self.rng.choice(["before", "after"]))
        elif kill:
            delay = self.rng.uniform(0.0, 1.5 * statistics.median(self.durations[op]))
            timer = threading.Timer(delay, self.client.kill)
        start = time.perf_counter()
        self.client.conn.send({"op": op, "die_at": die_at, **payload})
        if timer is not None:
            timer.start()
        reply = self.client.wait_reply(COMMAND_TIMEOUT)
        if timer is not None:
            timer.cancel()
            timer.join()
        if reply is not None:
            self.durations[op].append(time.perf_counter() - start)
        if reply is None or self.client.fired:
            self.client.proc.join(10)
            self._died(mid_command=reply is None, at_commit_point=reply is None and die_at is not None)
            return None
        if not reply["ok"]:
            self.figures.unexpected_errors.append(f"{op}: {reply['error']}")
        return reply

    def _kills_left(self) -> range:
        return range(max(0, self.target_kills - self.figures.kills))

    def _died(self, *, mid_command: bool, at_commit_point: bool) -> None:
        assert self.client is not None
        self.client.stop()
        self.figures.kills += 1
        self.figures.kills_mid_command += int(mid_command)
        self.figures.kills_at_commit_point += int(at_commit_point)
        self.audit()
        self._start(may_die=len(self._kills_left()) > 0)
        self._resubmit_unacked()

    # ---------------------------------------------------------------- the audit
    def audit(self) -> None:
        """Check the dead client's disk: every acknowledged request present and readable,
        served ones with a receipt matching their ids, the history store intact."""
        self.figures.audits += 1
        queue = DeletionQueue(self.state_dir)
        try:
            on_disk = {r.request_id: r for r in queue.all()}
        except FedUnlearnError as err:
            self.figures.corrupted_request_files += 1
            self.figures.unexpected_errors.append(f"audit: {err}")
            return
        self.figures.requests_lost += len(self.acked - set(on_disk))
        self.acked -= self.acked - set(on_disk)  # count each loss once
        for request in on_disk.values():
            if request.status == "served":
                try:
                    ids = queue.committed_ids(request.request_id)
                    matches = ids is not None and queue.ids_match_receipt(request.request_id, ids)
                except (FedUnlearnError, ValueError, OSError) as err:
                    self.figures.unexpected_errors.append(f"audit: {err}")
                    matches = False
                self.figures.receipt_mismatches += int(not matches)
        history = self.state_dir / "history" / "kill-test"
        if history.exists():
            try:
                HistoryStore.for_model(history, model=self._model(), config=self.config.history).verify()
            except FedUnlearnError as err:
                self.figures.corrupted_stores += 1
                self.figures.unexpected_errors.append(f"audit: {err}")

    # ---------------------------------------------------------------- owner and server
    def _new_request(self) -> DeletionRequest | None:
        free = self.all_ids[~np.isin(self.all_ids, list(self.claimed))]
        free = free[~np.isin(self.labels[np.isin(self.all_ids, free)], list(self.claimed_labels))]
        request_id = f"req-{self.next_request:03d}"
        self.next_request += 1
        labels = sorted(set(self.labels.tolist()) - self.claimed_labels)
        if labels and self.rng.random() < 0.15:
            label = int(self.rng.choice(labels))
            of_class = self.all_ids[self.labels == label]
            if np.isin(of_class, list(self.claimed)).any():
                return None
            self.claimed_labels.add(label)
            self.claimed.update(of_class.tolist())
            return DeletionRequest.new(kind="class", label=label, request_id=request_id)
        count = min(len(free), self.rng.randint(3, 12))
        if count < 3:
            return None
        ids = [int(v) for v in self.rng.sample(free.tolist(), count)]
        self.claimed.update(ids)
        return DeletionRequest.new(kind="sample", sample_ids=ids, request_id=request_id)

    def submit(self, request: DeletionRequest) -> None:
        self.unacked[request.request_id] = request
        if self.call("submit", request=request.to_json()) is not None:
            self.acked.add(request.request_id)
            self.unacked.pop(request.request_id)
            self.figures.requests_acknowledged += 1
            self.figures.kinds[request.kind] += 1

    def _resubmit_unacked(self) -> None:
        """After a restart: an interrupted submit either completed (acknowledged now) or is filed
        again by the owner at the next chance (``_file_again``)."""
        on_disk = {r.request_id for r in DeletionQueue(self.state_dir).all()}
        for request_id, request in list(self.unacked.items()):
            if request_id in on_disk:
                self.acked.add(request_id)
                self.unacked.pop(request_id)
                self.figures.requests_acknowledged += 1
                self.figures.kinds[request.kind] += 1

    def _file_again(self) -> None:
        for request in list(self.unacked.values()):
            self.submit(request)

    def run_round(self, *, killable: bool = True) -> None:
        self.round += 1
        self.figures.rounds += 1
        server_round = self.round
        global_path = save_tensors(self.root / "server-global.pt", self.global_state)
        reply = self.call(
            "train", killable=killable, round=server_round, weights=self.weights, **{"global": global_path}
        )
        if reply is None or not reply["ok"]:
            self.weights[server_round] = 0.0  # the update never reached the model
            return
        self.global_state = load_tensors(reply["state"])
        self.weights[server_round] = 1.0
        self.serve(reply["pending"], killable=killable)

    def serve(self, pending: list[str], *, killable: bool) -> None:
        for request_id in list(self.awaiting):  # commits whose confirmation is missing
            if self._commit(request_id, killable) is None:
                return
        for request_id in pending:
            if request_id in self.awaiting or request_id in self.server_receipts:
                continue
            if not self._phase(request_id, killable):
                return

    def _phase(self, request_id: str, killable: bool) -> bool:
        """One unlearning phase; False if the client died (stop serving this round)."""
        path = save_tensors(self.root / "server-global.pt", self.global_state)
        trained = sorted(r for r, w in self.weights.items() if w > 0)
        reply = self.call(
            "forget",
            killable=killable,
            request_id=request_id,
            weights=self.weights,
            trained_rounds=trained,
            **{"global": path},
        )
        if reply is None or not reply["ok"]:
            return self._report(reply, request_id, killable)
        theta = add_scaled(self.global_state, load_tensors(reply["delta"]))
        theta_path = save_tensors(self.root / "server-theta.pt", theta)
        reply = self.call("verify", killable=killable, request_id=request_id, theta=theta_path)
        if reply is None or not reply["ok"]:
            return self._report(reply, request_id, killable)
        draft = DeletionReceipt(
            request_id=request_id,
            kind="",
            num_samples=0,
            ids_hmac="",
            model_digest_before=state_digest(self.global_state),
            model_digest_after=state_digest(theta),
            server_round=self.round,
            method=self.config.unlearn.method,
            metrics=reply["metrics"],
        )
        self.global_state = theta  # verified: applied before the commit, as the server does
        self.awaiting[request_id] = draft.to_json()
        return self._commit(request_id, killable) is not None

    def _report(self, reply: dict[str, Any] | None, request_id: str, killable: bool) -> bool:
        if reply is None:
            return False
        return self.call("fail", killable=killable, request_id=request_id, reason=reply["error"]) is not None

    def _commit(self, request_id: str, killable: bool) -> dict[str, Any] | None:
        reply = self.call("commit", killable=killable, request_id=request_id, receipt=self.awaiting[request_id])
        if reply is not None and reply["ok"]:
            self.server_receipts[request_id] = reply["receipt"]
            del self.awaiting[request_id]
            self.figures.served += 1
        return reply

    # ---------------------------------------------------------------- the campaign
    def run(self, *, max_rounds: int = 400, drain_rounds: int = 12) -> Figures:
        """Kill until ``kills`` kills happened, then run without kills until all is served."""
        self._start(may_die=False)
        try:
            while self.figures.kills < self.target_kills and self.round < max_rounds:
                self._file_again()
                if self.rng.random() < 0.5:
                    request = self._new_request()
                    if request is not None:
                        self.submit(request)
                self.run_round()
            for _ in range(drain_rounds):
                if not self._open_work():
                    break
                self._file_again()
                self.run_round(killable=False)
        finally:
            assert self.client is not None
            self.client.stop()
        self.audit()
        return self.figures

    def _open_work(self) -> bool:
        pending = [r for r in DeletionQueue(self.state_dir).all() if r.status == "pending"]
        return bool(pending or self.awaiting or self.unacked)
