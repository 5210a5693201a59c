"""What a client does in an unlearning phase, on its own data and history only.

The server orchestrates (ALGORITHMS.md, "Federated fast-slow aggregation"); each step here
runs on the client that owns the data:

- ``fast_correction``: the forgetting client's change (partial amnesiac from its pruned
  history, label-flip / ascent steps, or SFR-style masked adaptive ascent);
- ``remain_correction``: K CE steps on retained data from the fast weights (slow part);
- ``remain_fisher``: the diagonal Fisher of retained data (for the saliency mask);
- ``verify``: FA and MIA on the forgotten samples, RA on the retained ones;
- ``commit``: mark the request served, keep the receipt, purge the spent history.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from fedunlearn.atomic import write_bytes_atomic
from fedunlearn.config import UnlearnConfig
from fedunlearn.deletion import DeletionReceipt, DeletionRequest, ids_digest
from fedunlearn.errors import DeletionRequestError
from fedunlearn.history import HistoryStore
from fedunlearn.metrics import accuracy, mia_efficacy
from fedunlearn.site import ClientSite, round_seed
from fedunlearn.types import Delta, SampleIds, StateDict
from fedunlearn.unlearning import Correction, Cost, ForgetRetainSplit, SFROnSession, UnlearnContext, get_method
from fedunlearn.unlearning.common import method_needs_retain
from fedunlearn.unlearning.remain import remain_steps
from fedunlearn.unlearning.saliency import build_saliency_mask, diagonal_fisher

logger = logging.getLogger(__name__)

#: Methods whose whole effect is one correction at the first outer step; SFR-style methods
#: spread their fast steps over all outer steps instead.
SPREAD_METHODS: frozenset[str] = frozenset({"sfr_on"})
#: Methods that read the client's update history.
HISTORY_METHODS: frozenset[str] = frozenset({"amnesiac", "partial_amnesiac"})
FISHER_MAX_BATCHES = 50


def resolve_request(site: ClientSite, request: DeletionRequest) -> SampleIds:
    """The concrete ids a request forgets on this client (validated against its data).

    Raises DeletionRequestError for ids this client does not hold, ids already forgotten,
    or a class this client has no (remaining) samples of.
    """
    forgotten = site.forgotten_ids()
    if request.kind == "sample":
        ids = np.asarray(request.sample_ids, dtype=np.int64)
        site.dataset.positions_of(ids)  # raises, naming ids this client does not hold
        again = ids[np.isin(ids, forgotten)]
        if len(again):
            raise DeletionRequestError(f"{len(again)} sample id(s) were already deleted: {again[:10].tolist()}")
        return ids
    retained = site.retained()
    if request.kind == "class":
        of_class: SampleIds = retained.ids()[retained.labels.numpy() == request.label]
        if len(of_class) == 0:
            raise DeletionRequestError(
                f"this client holds no (remaining) samples of class {request.label}; classes held: "
                f"{sorted(set(retained.labels.tolist()))}"
            )
        return of_class
    return retained.ids()


def forget_split(site: ClientSite, ids: SampleIds) -> ForgetRetainSplit:
    """D_f = the request's samples, D_r = everything else this client still holds."""
    retained = site.retained()
    return ForgetRetainSplit(forget=site.dataset.subset_by_ids(ids), retain=retained.without_ids(ids))


def is_spread(config: UnlearnConfig) -> bool:
    """Whether the method's fast part runs at every outer step (SFR-style) or once."""
    return config.method in SPREAD_METHODS


@dataclass(frozen=True)
class FastResult:
    """The forgetting client's fast change and the FA it saw before making it."""

    correction: Correction
    fa_before: float
    num_forget: int
    num_retained: int


def fast_correction(
    site: ClientSite,
    state: StateDict,
    request: DeletionRequest,
    *,
    outer_step: int,
    remain_fisher: dict[str, torch.Tensor] | None,
) -> FastResult:
    """The forgetting client's change at ``outer_step`` (0-based), from the global ``state``.

    One-shot methods (amnesiac, label-flip, ascent, ...) return their whole correction at
    step 0 and nothing later: stored history is spent once. SFR-on runs its share of masked
    adaptive ascent steps at every outer step. Amnesiac corrections are scaled by the FedAvg
    round weights the server reported (``history_weighted=True``).
    """
    config = site.config.unlearn
    split = forget_split(site, resolve_request(site, request))
    model = site.build_model(state)
    fa_before = accuracy(model, split.forget)
    seed = phase_seed(site, request, outer_step)
    history = None if is_spread(config) or outer_step > 0 else _history_for(site, model, config.method)
    if is_spread(config):
        correction = _sfr_fast_share(site, model, split, request, outer_step, remain_fisher, seed)
    elif outer_step > 0:
        correction = _zero(config.method, state, "one-shot method, already applied")
    elif len(split.retain) == 0 and method_needs_retain(config.method, config):
        correction = _zero(config.method, state, "no retained data on this client; the slow steps do the work")
    elif history is not None and not history.affected_steps(split.forget.ids()):
        # Never trained on, or every step that touched them was purged with an earlier request's
        # batches (and so already subtracted): nothing is left to undo.
        correction = _zero(config.method, state, "no stored step holds these samples; the slow steps do the rest")
    else:
        context = UnlearnContext(
            history=history,
            history_weighted=True,
            train_config=site.config.train,
            seed=seed,
            remain_fisher=remain_fisher,
            model_factory=site.build_model,
        )
        correction = get_method(config.method)(model, split=split, config=config, context=context)
    return FastResult(correction, fa_before, len(split.forget), len(split.retain))


def _zero(method: str, state: StateDict, why: str) -> Correction:
    zero = {k: torch.zeros_like(v) for k, v in state.items() if v.is_floating_point()}
    return Correction(method, zero, Cost(), {"skipped": why})


def _history_for(site: ClientSite, model: torch.nn.Module, method: str) -> HistoryStore | None:
    """The history a method reads: conventional amnesiac prefers the dense companion store."""
    if method not in HISTORY_METHODS:
        return None
    full = method == "amnesiac" and site.full_history_dir.exists()
    return site.history(model, full=full)


def _sfr_fast_share(
    site: ClientSite,
    model: torch.nn.Module,
    split: ForgetRetainSplit,
    request: DeletionRequest,
    outer_step: int,
    remain_fisher: dict[str, torch.Tensor] | None,
    seed: int,
) -> Correction:
    """Outer step s runs SFR-on iterations ``[s*n, (s+1)*n)`` (n = sfr_iters / outer_steps):
    their forget steps here, their remain steps on the other clients (the slow part).

    The saliency mask is built once (step 0, from local F_f and the server-averaged F_r of
    the remaining clients) and kept in the state directory; the optimizer is fresh at each
    outer step (momentum does not cross messages).
    """
    config = site.config.unlearn
    per_step = max(1, math.ceil(config.sfr_iters / config.outer_steps))
    total = dataclasses.replace(config, sfr_iters=per_step * config.outer_steps)
    start = time.perf_counter()
    mask, saliency_info = _phase_mask(site, model, split, request, remain_fisher)
    session = SFROnSession(model, forget=split.forget, retain=None, mask=mask, config=total, seed=seed)
    for t in range(outer_step * per_step, (outer_step + 1) * per_step):
        if t % config.forget_freq == 0:
            session.forget_step(t)
    cost = Cost(seconds=time.perf_counter() - start, forward_backward=session.forget_steps, extra=saliency_info)
    return Correction(
        "sfr_on", session.delta(), cost, {"iterations": [outer_step * per_step, (outer_step + 1) * per_step]}
    )


def _phase_mask(
    site: ClientSite,
    model: torch.nn.Module,
    split: ForgetRetainSplit,
    request: DeletionRequest,
    remain_fisher: dict[str, torch.Tensor] | None,
) -> tuple[dict[str, torch.Tensor] | None, dict[str, float]]:
    path = site.state_dir / "unlearning" / f"{request.request_id}.mask.pt"
    if path.exists():
        return torch.load(path, weights_only=True), {}
    context = UnlearnContext(remain_fisher=remain_fisher)
    result = build_saliency_mask(model, split=split, config=site.config.unlearn, context=context)
    if result.mask is not None:
        buffer = io.BytesIO()
        torch.save(result.mask, buffer)
        write_bytes_atomic(path, buffer.getvalue())
    return result.mask, {
        "mask_fraction": result.fraction,
        "fisher_seconds": result.seconds,
        "fisher_forget_batches": float(result.forget_batches),
    }


def phase_seed(site: ClientSite, request: DeletionRequest, outer_step: int) -> int:
    """Seed of one client's work in one outer step of one request's phase."""
    digest = int.from_bytes(hashlib.sha256(request.request_id.encode()).digest()[:4], "little")
    return round_seed(site.config.seed + digest, site.partition_id, 100_000 + outer_step)


def remain_correction(
    site: ClientSite, state: StateDict, *, steps: int, seed: int, exclude: SampleIds | None = None
) -> tuple[Delta, int]:
    """K CE steps on this client's retained data (minus ``exclude``) from ``state``; returns
    the change and how many samples it drew from (the FedAvg weight of the slow step)."""
    retained = site.retained()
    if exclude is not None and len(exclude):
        retained = retained.without_ids(exclude)
    train = site.config.train
    delta = remain_steps(
        site.build_model(state),
        retained,
        steps=steps,
        lr=train.lr,
        batch_size=train.batch_size,
        seed=seed,
        momentum=train.momentum,
    )
    return delta, len(retained)


def remain_fisher(site: ClientSite, state: StateDict) -> tuple[dict[str, torch.Tensor], int]:
    """Diagonal Fisher of CE on this client's retained data (at most FISHER_MAX_BATCHES batches)."""
    retained = site.retained()
    fisher = diagonal_fisher(
        site.build_model(state), retained, batch_size=site.config.unlearn.batch_size, max_batches=FISHER_MAX_BATCHES
    )
    return fisher, len(retained)


def verify(site: ClientSite, state: StateDict, request: DeletionRequest, *, seed: int) -> dict[str, float]:
    """FA and MIA-efficacy on the forgotten samples, RA on what this client keeps."""
    ids = resolve_request(site, request)
    split = forget_split(site, ids)
    model = site.build_model(state)
    result = {"FA": accuracy(model, split.forget), "num_forget": float(len(split.forget))}
    if len(split.retain):
        result["RA"] = accuracy(model, split.retain)
        result["MIA"] = mia_efficacy(model, forget=split.forget, retain=split.retain, test=site.test, seed=seed).value
    return result


def commit(site: ClientSite, request: DeletionRequest, receipt: DeletionReceipt) -> tuple[DeletionReceipt, int]:
    """Serve the request for good: record the receipt and the ids, purge their history steps,
    then mark the request served.

    The client completes the server's receipt with what only it knows: how many samples
    and the SHA-256 of their ids (never the ids). The receipt and ids are written first
    (``DeletionQueue.begin_commit``): from then on the commit is decided, the ids are out of
    training, and a crash before the end is finished by ``resume_commits`` on the next start,
    so a request is never served twice nor left half-served (the purge is idempotent).
    Returns the completed receipt and the number of purged history steps.
    """
    ids = resolve_request(site, request)
    final = dataclasses.replace(
        receipt, request_id=request.request_id, kind=request.kind, num_samples=len(ids), ids_sha256=ids_digest(ids)
    )
    site.queue.begin_commit(request.request_id, resolved_ids=ids, receipt=final)
    purged = _finish_commit(site, request, ids)
    return final, purged


def _finish_commit(site: ClientSite, request: DeletionRequest, ids: SampleIds) -> int:
    purged = sum(store.purge(ids) for store in site.history_stores(site.build_model()))
    site.queue.finish_commit(request.request_id)
    logger.info(
        "served %s (%s, %d samples, %d history steps purged)", request.request_id, request.kind, len(ids), purged
    )
    return purged


def resume_commits(site: ClientSite) -> list[str]:
    """Finish every commit a crash interrupted (receipt written, request still pending); return their ids.

    Raises DeletionRequestError if the ids of such a request no longer match its receipt's hash.
    """
    finished = []
    for request in site.queue.interrupted_commits():
        receipt = site.queue.receipt(request.request_id)
        ids = site.queue.committed_ids(request.request_id)
        if ids is None:  # the crash came between the receipt and the ids: nothing was excluded yet
            ids = resolve_request(site, request)
            if ids_digest(ids) != receipt.ids_sha256:
                raise DeletionRequestError(
                    f"request {request.request_id}: its receipt's ids hash {receipt.ids_sha256[:16]}... does not match "
                    f"the {len(ids)} ids it resolves to now; the receipt cannot be completed. Inspect "
                    f"{site.queue.receipts_dir} and the request file."
                )
            site.queue.begin_commit(request.request_id, resolved_ids=ids, receipt=receipt)
        logger.warning("finishing the commit of %s that a crash interrupted", request.request_id)
        _finish_commit(site, request, ids)
        finished.append(request.request_id)
    return finished
