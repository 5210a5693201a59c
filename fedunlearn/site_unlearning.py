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
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fedunlearn.criterion import CriterionResult, check_forgotten
from fedunlearn.data import IndexedDataset
from fedunlearn.deletion import DeletionReceipt, DeletionRequest
from fedunlearn.errors import DeletionRequestError, HistoryError
from fedunlearn.history import HistoryStore
from fedunlearn.metrics import accuracy
from fedunlearn.site import ClientSite, evicted_rounds, round_seed
from fedunlearn.types import Delta, SampleIds, StateDict
from fedunlearn.unlearning import (
    Correction,
    Cost,
    ForgetRetainSplit,
    MethodSpec,
    SFROnSession,
    UnlearnContext,
    get_method,
    method_settings,
)
from fedunlearn.unlearning.remain import remain_steps
from fedunlearn.unlearning.saliency import build_saliency_mask, diagonal_fisher
from fedunlearn.unlearning.sfr_on import SFROnSettings

logger = logging.getLogger(__name__)


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


@dataclass(frozen=True)
class FastResult:
    """The forgetting client's fast change, and its criterion on the weights it was sent."""

    correction: Correction
    check: CriterionResult
    num_forget: int
    num_retained: int


def fast_correction(
    site: ClientSite,
    state: StateDict,
    request: DeletionRequest,
    *,
    outer_step: int,
    remain_fisher: RemainFisher | None,
    trained_rounds: frozenset[int] | None = None,
) -> FastResult:
    """Judge the weights ``state`` the server sent, then the change to make at ``outer_step``.

    The criterion (``fedunlearn.criterion``) comes first: when it already holds and the
    method is not a control, nothing is computed (the phase can stop). Otherwise the
    method's traits decide: ``fast="once"`` methods return their correction at step 0, and
    later only if they strengthen by repeating (``strengthen="repeat"``: label-flip,
    ascent); history methods (``strengthen="scale"``) send theirs once, the server rescales
    it; ``fast="spread"`` (SFR-on) runs its share of masked adaptive ascent at every step;
    ``fast="none"`` sends nothing. History methods read the history their trait names,
    scaled by the FedAvg round weights the server reported; ``trained_rounds`` are the rounds
    the server says this client's update entered the model (None: not said), and a history
    missing any of them stops the phase (HistoryError): no correction from a history that is
    not there. When the server says none did (the client was never sampled, or its updates
    were all lost), history methods have nothing to undo and send no change.
    """
    spec = get_method(site.config.unlearn.method)
    settings = method_settings(site.config.unlearn)
    split = forget_split(site, resolve_request(site, request))
    model = site.build_model(state)
    check = check_forgotten(site, model, kind=request.kind, forget=split.forget, config=site.config.unlearn)
    seed = phase_seed(site, request, outer_step)
    traits = spec.traits
    once = traits.fast == "once" and (outer_step == 0 or traits.strengthen == "repeat")
    history = _history_for(site, model, spec, trained_rounds) if once else None
    if check.passed and not traits.control:
        correction = _zero(spec.name, state, "the criterion holds: nothing to do")
    elif traits.fast == "spread":
        correction = _sfr_fast_share(site, model, split, request, outer_step, remain_fisher, seed)
    elif not once:
        correction = _zero(spec.name, state, "this method sends no fast change at this step")
    elif history is None and trained_rounds is not None and not trained_rounds and _reads_history(spec):
        correction = _zero(spec.name, state, "this client's updates never entered the model: nothing to undo")
    elif len(split.retain) == 0 and spec.needs_retain(settings):
        correction = _zero(spec.name, state, "no retained data on this client; the slow steps do the work")
    elif history is not None and not history.affected_steps(split.forget.ids()):
        # Every step that touched these samples was purged with an earlier request's batches
        # (and so already subtracted): nothing is left to undo.
        correction = _zero(spec.name, state, "no stored step holds these samples; the slow steps do the rest")
    else:
        context = UnlearnContext(
            history=history,
            history_weighted=True,
            train_config=site.config.train,
            seed=seed,
            remain_fisher=remain_fisher.values if remain_fisher is not None else None,
            model_factory=site.build_model,
        )
        correction = spec(model, split=split, settings=settings, context=context)
    return FastResult(correction, check, len(split.forget), len(split.retain))


def _zero(method: str, state: StateDict, why: str) -> Correction:
    zero = {k: torch.zeros_like(v) for k, v in state.items() if v.is_floating_point()}
    return Correction(method, zero, Cost(), {"skipped": why})


def _reads_history(spec: MethodSpec[Any]) -> bool:
    return spec.traits.history in ("pruned", "dense")


def _history_for(
    site: ClientSite, model: torch.nn.Module, spec: MethodSpec[Any], trained_rounds: frozenset[int] | None
) -> HistoryStore | None:
    """The history the method's trait names, checked to hold every round this client trained in.

    A missing history, or one without a round in which this client's update entered the
    model (other than rounds its storage budget dropped on purpose), raises HistoryError: a
    zero correction from a history that is not there would be receipted as unlearning. A
    client whose updates never entered the model (never sampled) needs no history.
    """
    if not _reads_history(spec) or trained_rounds == frozenset():
        return None  # no history to read, or none to undo: this client's updates never entered the model
    full = spec.traits.history == "dense"
    config = dataclasses.replace(site.config.history, keep_ratio=1.0) if full else site.config.history
    directory = site.full_history_dir if full else site.history_dir
    hint = " (a dense history is recorded with history.record-full=true)" if full else ""
    try:
        store = HistoryStore.open_existing(directory, model=model, config=config)
    except HistoryError as err:
        raise HistoryError(f"{spec.name} reads the {spec.traits.history} update history{hint}: {err}") from None
    if trained_rounds is None:  # not said: at least some history must be there
        missing = "any round" if store.is_empty else ""
    else:
        rounds = sorted(trained_rounds - set(store.rounds()) - evicted_rounds(directory))
        missing = f"round(s) {rounds[:10]}, in which this client's update entered the model" if rounds else ""
    if missing:
        raise HistoryError(
            f"the {spec.traits.history} update history holds no record of {missing}; a correction from it would "
            "not undo them. Restore the history from backup, or serve the request with a method that needs no history"
        )
    return store


def _sfr_fast_share(
    site: ClientSite,
    model: torch.nn.Module,
    split: ForgetRetainSplit,
    request: DeletionRequest,
    outer_step: int,
    remain_fisher: RemainFisher | None,
    seed: int,
) -> Correction:
    """Outer step s runs SFR-on iterations ``[s*n, (s+1)*n)`` (n = iters / outer_steps) here:
    a forget step every ``forget_freq`` iterations and, with ``local_remain`` and retained
    data, a remain step on this client's D_r in every iteration (without one, with
    ``momentum_carry``, a zero-gradient step that carries the forget step's momentum),
    under one optimizer and the cosine schedule (the official loop on this client's data).
    The other clients' remain steps are the slow part.

    The saliency mask is rebuilt at every outer step from the weights received (F_f here;
    F_r: the server's average over the remaining clients combined with this client's own
    retained data, weighted by sample counts), so it follows θ, after a back-off too.
    """
    settings: SFROnSettings = method_settings(site.config.unlearn)
    per_step = max(1, math.ceil(settings.iters / settings.outer_steps))
    total = dataclasses.replace(settings, iters=per_step * settings.outer_steps)
    start = time.perf_counter()
    mask, info = _step_mask(site, model, split, remain_fisher, settings)
    retain = split.retain if settings.local_remain and len(split.retain) else None
    session = SFROnSession(model, forget=split.forget, retain=retain, mask=mask, settings=total, seed=seed)
    coast = settings.momentum_carry and retain is None
    for t in range(outer_step * per_step, (outer_step + 1) * per_step):
        session.iteration(t, remain=retain is not None, coast=coast)
    steps = session.forget_steps + session.remain_steps
    examples = steps * settings.batch_size
    cost = Cost(seconds=time.perf_counter() - start, forward_backward=steps, examples=examples, extra=info)
    return Correction(
        "sfr_on", session.delta(), cost, {"iterations": [outer_step * per_step, (outer_step + 1) * per_step]}
    )


@dataclass(frozen=True)
class RemainFisher:
    """The remaining clients' averaged diagonal Fisher and how many samples it covers."""

    values: dict[str, torch.Tensor]
    count: float


def _step_mask(
    site: ClientSite,
    model: torch.nn.Module,
    split: ForgetRetainSplit,
    remain_fisher: RemainFisher | None,
    settings: SFROnSettings,
) -> tuple[dict[str, torch.Tensor] | None, dict[str, float]]:
    """SFR-on's saliency mask at the current weights, F_r over all retained data."""
    combined = None
    if remain_fisher is not None:
        combined = remain_fisher.values
        if len(split.retain):
            own = diagonal_fisher(
                model, split.retain, batch_size=settings.batch_size, max_batches=settings.fisher_max_batches
            )
            n, m = remain_fisher.count, float(len(split.retain))
            combined = {k: (v * n + own[k] * m) / (n + m) for k, v in remain_fisher.values.items()}
    result = build_saliency_mask(model, split=split, config=settings, context=UnlearnContext(remain_fisher=combined))
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
    site: ClientSite,
    state: StateDict,
    *,
    steps: int,
    seed: int,
    exclude: SampleIds | None = None,
    optimizer: tuple[float, float, float] | None = None,
) -> tuple[Delta, int]:
    """K CE steps on this client's retained data (minus ``exclude``) from ``state``; returns
    the change and how many samples it drew from (the FedAvg weight of the slow step).

    ``optimizer`` is the (lr, momentum, weight decay) of the method's own slow steps (SFR-on);
    None: the training's SGD.
    """
    retained = _retained_without(site, exclude)
    train = site.config.train
    if len(retained) == 0:  # nothing kept (a client-level request): no slow step from this client
        return {k: torch.zeros_like(v) for k, v in state.items() if v.is_floating_point()}, 0
    lr, momentum, decay = optimizer or (train.lr, train.momentum, train.weight_decay)
    delta = remain_steps(
        site.build_model(state),
        retained,
        steps=steps,
        lr=lr,
        batch_size=train.batch_size,
        seed=seed,
        momentum=momentum,
        weight_decay=decay,
    )
    return delta, len(retained)


def _retained_without(site: ClientSite, exclude: SampleIds | None) -> IndexedDataset:
    retained = site.retained()
    return retained.without_ids(exclude) if exclude is not None and len(exclude) else retained


def remain_fisher(
    site: ClientSite, state: StateDict, *, exclude: SampleIds | None = None
) -> tuple[dict[str, torch.Tensor], int]:
    """Diagonal Fisher of CE on this client's retained data (minus ``exclude``), over all of it
    unless ``unlearn.sfr_on.fisher-max-batches`` caps the pass; and the sample count."""
    retained = _retained_without(site, exclude)
    settings: SFROnSettings = method_settings(site.config.unlearn, "sfr_on")
    model = site.build_model(state)
    fisher = diagonal_fisher(model, retained, batch_size=settings.batch_size, max_batches=settings.fisher_max_batches)
    return fisher, len(retained)


def verify(site: ClientSite, state: StateDict, request: DeletionRequest) -> tuple[CriterionResult, dict[str, float]]:
    """The criterion on ``state`` and the figures the server may see: the criterion's, plus RA
    on what this client keeps (absent for a client-level request: nothing is kept)."""
    split = forget_split(site, resolve_request(site, request))
    model = site.build_model(state)
    check = check_forgotten(site, model, kind=request.kind, forget=split.forget, config=site.config.unlearn)
    figures = {**check.figures, "passed": float(check.passed)}
    if len(split.retain):
        figures["RA"] = accuracy(model, split.retain)
    return check, figures


@dataclass(frozen=True)
class CommitResult:
    """What a commit did: the receipt and purged steps, or the check that refused it."""

    receipt: DeletionReceipt | None
    purged: int
    check: CriterionResult | None = None


def commit(
    site: ClientSite,
    request: DeletionRequest,
    receipt: DeletionReceipt,
    *,
    state: StateDict | None = None,
    record_failure: bool = True,
) -> CommitResult:
    """Serve the request for good, if the weights it ends with pass this site's criterion.

    With ``state`` (the weights the phase ends with), the criterion is checked first on
    them: a model that does not pass is never receipted as forgotten; the request stays
    pending with the failed checks as its reason (``DeletionQueue.record_failure``, unless
    ``record_failure`` is False: a tentative commit in the middle of a phase), and the
    result carries the check. Without ``state`` (a control, or a server-side phase that
    verified otherwise) it commits as asked.

    Committing records the receipt and the ids, purges their history steps, then marks the
    request served. The client completes the server's receipt with what only it knows: how
    many samples and a keyed hash (HMAC) of their ids under this node's secret (never the
    ids); the server gets the receipt back without the count (``server_copy``). The
    receipt and ids are written first (``DeletionQueue.begin_commit``): from then on the
    commit is decided, the ids are out of training, and a crash before the end is finished
    by ``resume_commits`` on the next start, so a request is never served twice nor left
    half-served (the purge is idempotent).
    """
    ids = resolve_request(site, request)
    metrics = dict(receipt.metrics)
    check = None
    if state is not None:
        check, figures = verify(site, state, request)
        metrics.update({f"check_{k}": v for k, v in figures.items()})
        if not check.passed:
            if record_failure:  # a tentative commit (a check mid-phase) leaves the request as it was
                site.queue.record_failure(request.request_id, f"not verified: {check.reason()}")
            return CommitResult(None, 0, check)
    draft = dataclasses.replace(
        receipt, request_id=request.request_id, kind=request.kind, num_samples=len(ids), metrics=metrics
    )
    final = site.queue.begin_commit(request.request_id, resolved_ids=ids, receipt=draft)
    return CommitResult(final, _finish_commit(site, request, ids), check)


def _finish_commit(site: ClientSite, request: DeletionRequest, ids: SampleIds) -> int:
    purged = sum(store.purge(ids) for store in site.history_stores(site.build_model()))
    site.queue.finish_commit(request.request_id)
    logger.info(
        "served %s (%s, %d samples, %d history steps purged)", request.request_id, request.kind, len(ids), purged
    )
    return purged


def resume_commits(site: ClientSite) -> list[str]:
    """Finish every commit a crash interrupted (receipt written, request still pending); return their ids.

    Raises DeletionRequestError if the ids of such a request no longer match its receipt's keyed hash.
    """
    finished = []
    for request in site.queue.interrupted_commits():
        receipt = site.queue.receipt(request.request_id)
        ids = site.queue.committed_ids(request.request_id)
        if ids is None:  # the crash came between the receipt and the ids: nothing was excluded yet
            ids = resolve_request(site, request)
            if not site.queue.ids_match_receipt(request.request_id, ids):
                raise DeletionRequestError(
                    f"request {request.request_id}: its receipt's ids hash does not match the {len(ids)} ids it "
                    f"resolves to now; the receipt cannot be completed. Inspect {site.queue.receipts_dir} and the "
                    "request file."
                )
            site.queue.begin_commit(request.request_id, resolved_ids=ids, receipt=receipt)
        logger.warning("finishing the commit of %s that a crash interrupted", request.request_id)
        _finish_commit(site, request, ids)
        finished.append(request.request_id)
    return finished
