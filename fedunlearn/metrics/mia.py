"""Membership inference on the forget set: the headline MIA score and the SalUn SVC attack.

**MIA (headline, everywhere; docs/METRICS.md).** A rank-based score with no fitted attack:

- per-sample statistic: LiRA's logit-scaled confidence (Carlini et al. 2022, "Membership
  inference attacks from first principles", IEEE S&P, Sec. IV-C)
  ``phi(x, y) = log(p_y / (1 - p_y)) = z_y - logsumexp_{i != y} z_i``, from the logits ``z``
  (finite where ``p_y`` rounds to 1); it orders samples as the loss attack of Yeom et al.
  2018 does (``phi`` decreases with the cross-entropy loss);
- MIA = AUC of ``phi`` on D_f against ``phi`` on held-out non-members drawn like D_f (a
  seeded sample of the test set, or of the node's held-out data)
  ``= P(phi_f > phi_n) + P(phi_f = phi_n) / 2``: 0.5 = D_f looks like unseen data, 1 =
  memorised, below 0.5 = less member-like than unseen data (a forgotten class, mislabelled
  records compared with correctly labelled non-members). Standard error: DeLong et al. 1988.

Without a decision boundary there is nothing to flip between two models whose predictions
barely differ, which is what makes the SVC attack below unstable.

**SVC MIA-efficacy (extra, for comparison with papers).** Jia et al. 2023 (NeurIPS), used by
SalUn (Fan et al. 2024) and SFR-on (Huang et al. 2024): shadow members = a seeded D_r subset,
shadow non-members = a seeded test subset of the same size ``min(len(test), len(retain),
max_shadow)``; one ``SVC(C=3, kernel='rbf', gamma='auto')`` per feature (confidence ``p_y``,
entropy, modified entropy of Song & Mittal 2021); efficacy = fraction of D_f predicted
*non-member*. Logarithms clamp at 1e-30 as the reference code does; SalUn's released
``m_entropy`` departs from Song & Mittal's formula, so only its confidence numbers compare.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from fedunlearn.data.indexed import IndexedDataset
from fedunlearn.metrics.accuracy import DEFAULT_BATCH_SIZE, predict_logits

logger = logging.getLogger(__name__)

_LOG_FLOOR = 1e-30
#: Default cap on the non-members of the MIA score (all of a 10,000-image test set).
DEFAULT_MAX_NONMEMBERS = 10_000
#: Default cap on each side of the SVC attack's shadow set (the SVC is O(n^2)).
DEFAULT_MAX_SHADOW = 2000
_FloatArray = npt.NDArray[np.float64]


# ================================================================== headline MIA score


@dataclass(frozen=True)
class MembershipScore:
    """The MIA score of one model on one forget set (``nan`` fields for an empty D_f).

    ``auc`` is P(a forgotten sample looks more member-like than a non-member), ties 1/2;
    ``std_error`` is DeLong's standard error of that AUC over the sampled points (``nan``
    with fewer than two samples on a side).

    >>> MembershipScore(auc=0.5, std_error=0.02, n_forget=100, n_nonmembers=1000).value
    0.5
    """

    auc: float
    std_error: float
    n_forget: int
    n_nonmembers: int

    @property
    def value(self) -> float:
        """The number reported as MIA (the AUC)."""
        return self.auc


@dataclass(frozen=True)
class SeedSpread:
    """Mean and sample standard deviation (``ddof=1``) of one metric over seeds.

    >>> SeedSpread(mean=0.5, std=0.01, n=3).mean
    0.5
    """

    mean: float
    std: float
    n: int


def spread_over_seeds(values: Sequence[float]) -> SeedSpread:
    """Summarise a metric measured once per seed as mean +- sample std (``ddof=1``).

    ``nan`` values (an empty forget set) are left out; ``std`` is ``nan`` below two values,
    so a single run never shows a spread of zero.
    """
    kept = np.asarray([v for v in values if not math.isnan(v)], dtype=np.float64)
    mean = float(kept.mean()) if len(kept) else math.nan
    std = float(kept.std(ddof=1)) if len(kept) > 1 else math.nan
    return SeedSpread(mean=mean, std=std, n=len(kept))


def logit_confidence(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """LiRA's ``phi = log(p_y / (1 - p_y)) = z_y - logsumexp_{i != y} z_i``, in float64.

    Computed from logits rather than probabilities: in float32 ``p_y`` rounds to 1 for most
    training samples of a well-fitted model, which would turn the ranking into ties.
    """
    z = logits.detach().cpu().double()
    y = labels.detach().cpu().to(torch.int64).reshape(-1, 1)
    others = z.scatter(1, y, -math.inf)
    return z.gather(1, y).squeeze(1) - torch.logsumexp(others, dim=1)


def _midranks(x: _FloatArray) -> _FloatArray:
    """1-based ranks of ``x`` with ties given their mean rank."""
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    upper = np.cumsum(counts)
    return np.asarray((upper - (counts - 1) / 2.0)[inverse], dtype=np.float64)


def _delong_std_error(forget: _FloatArray, nonmembers: _FloatArray) -> float:
    """DeLong's standard error of the AUC, from midranks (Sun & Xu 2014, fast DeLong)."""
    m, n = len(forget), len(nonmembers)
    if m < 2 or n < 2:
        return math.nan
    combined = _midranks(np.concatenate([forget, nonmembers]))
    v10 = (combined[:m] - _midranks(forget)) / n  # per forgotten sample: share of non-members below
    v01 = 1.0 - (combined[m:] - _midranks(nonmembers)) / m
    return math.sqrt(np.var(v10, ddof=1) / m + np.var(v01, ddof=1) / n)


def membership_auc(*, forget: npt.ArrayLike, nonmembers: npt.ArrayLike) -> MembershipScore:
    """AUC of per-sample membership statistics: forgotten samples against non-members.

    Parameters
    ----------
    forget, nonmembers
        One statistic per sample, higher = more member-like (``logit_confidence``).

    Returns
    -------
    MembershipScore
        ``auc = P(s_f > s_n) + P(s_f = s_n) / 2``; ``nan`` for an empty forget set.
        Raises ValueError for an empty non-member set (nothing to compare with) and for
        non-finite statistics (a diverged model), rather than returning a meaningless AUC.
    """
    f = np.asarray(forget, dtype=np.float64).reshape(-1)
    n = np.asarray(nonmembers, dtype=np.float64).reshape(-1)
    if len(n) == 0:
        raise ValueError("the MIA needs non-members, got none; pass held-out samples (e.g. the test set)")
    if not (np.all(np.isfinite(f)) and np.all(np.isfinite(n))):
        raise ValueError("membership statistics must be finite; compute them with logit_confidence")
    if len(f) == 0:
        return MembershipScore(auc=math.nan, std_error=math.nan, n_forget=0, n_nonmembers=len(n))
    from sklearn.metrics import roc_auc_score  # imported here: scikit-learn is slow to import

    truth = np.concatenate([np.ones(len(f)), np.zeros(len(n))])
    auc = float(roc_auc_score(truth, np.concatenate([f, n])))
    return MembershipScore(auc=auc, std_error=_delong_std_error(f, n), n_forget=len(f), n_nonmembers=len(n))


def nonmember_positions(num_nonmembers: int, *, seed: int, max_nonmembers: int | None) -> npt.NDArray[np.int64]:
    """Sorted positions of the non-members the score uses: all, or a seeded random subset.

    ``max_nonmembers=None`` or ``>= num_nonmembers`` takes every position (no randomness).
    """
    if max_nonmembers is not None and max_nonmembers < 1:
        raise ValueError(f"max_nonmembers must be >= 1 or None, got {max_nonmembers}")
    if max_nonmembers is None or num_nonmembers <= max_nonmembers:
        return np.arange(num_nonmembers, dtype=np.int64)
    rng = np.random.default_rng([seed, 2])  # a stream apart from the SVC's and RA's subsets
    return np.sort(rng.choice(num_nonmembers, size=max_nonmembers, replace=False)).astype(np.int64)


def membership_score_from_logits(
    *,
    forget_logits: torch.Tensor,
    forget_labels: torch.Tensor,
    nonmember_logits: torch.Tensor,
    nonmember_labels: torch.Tensor,
    seed: int = 0,
    max_nonmembers: int | None = DEFAULT_MAX_NONMEMBERS,
) -> MembershipScore:
    """``membership_score`` from logits already computed on D_f and on all candidate non-members."""
    pos = torch.from_numpy(nonmember_positions(len(nonmember_labels), seed=seed, max_nonmembers=max_nonmembers))
    return membership_auc(
        forget=logit_confidence(forget_logits, forget_labels).numpy(),
        nonmembers=logit_confidence(nonmember_logits[pos], nonmember_labels[pos]).numpy(),
    )


def membership_score(
    model: nn.Module,
    *,
    forget: IndexedDataset,
    nonmembers: IndexedDataset,
    seed: int = 0,
    max_nonmembers: int | None = DEFAULT_MAX_NONMEMBERS,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: torch.device | str | None = None,
) -> MembershipScore:
    """The MIA of ``model`` on ``forget``: AUC of LiRA's ``phi`` on D_f against non-members.

    Parameters
    ----------
    model
        The model to attack (its train/eval mode is restored afterwards).
    forget
        D_f with the labels it was trained on (mislabelled samples keep their wrong label).
    nonmembers
        Samples the model never trained on, drawn like D_f: the test set on the server, the
        node's held-out data on a client (docs/METRICS.md: atypical D_f needs matching ones).
    seed, max_nonmembers
        At most ``max_nonmembers`` non-members are used, a seeded random subset
        (``nonmember_positions``); ``None``: all of them.
    batch_size, device
        Passed to ``predict_logits``.

    Returns
    -------
    MembershipScore
        ``auc`` near 0.5 when D_f looks like unseen data, near 1 when it is memorised.
    """
    positions = nonmember_positions(len(nonmembers), seed=seed, max_nonmembers=max_nonmembers)
    chosen = nonmembers.select(positions)
    result = membership_score_from_logits(
        forget_logits=predict_logits(model, forget, batch_size=batch_size, device=device),
        forget_labels=forget.labels,
        nonmember_logits=predict_logits(model, chosen, batch_size=batch_size, device=device),
        nonmember_labels=chosen.labels,
        max_nonmembers=None,
    )
    logger.debug("MIA score %s", result)
    return result


# ============================================================ SVC MIA-efficacy (extra)


@dataclass(frozen=True)
class MIAResult:
    """SVC MIA-efficacy of the three attacks, each the fraction of D_f predicted non-member.

    ``value`` is the confidence attack's efficacy (SalUn's tables). All three are ``nan``
    for an empty forget set. Not the headline MIA: see ``MembershipScore``.

    >>> MIAResult(confidence=0.9, entropy=0.8, modified_entropy=0.85,
    ...           num_forget=10, num_shadow_members=5, num_shadow_non_members=5).value
    0.9
    """

    confidence: float
    entropy: float
    modified_entropy: float
    num_forget: int
    num_shadow_members: int
    num_shadow_non_members: int

    @property
    def value(self) -> float:
        """The confidence attack's efficacy."""
        return self.confidence


def confidence_feature(probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``p_y``: the probability of the true label, one value per row."""
    return probs.gather(1, labels.reshape(-1, 1).to(torch.int64)).squeeze(1)


def entropy_feature(probs: torch.Tensor) -> torch.Tensor:
    """Shannon entropy ``-sum_i p_i log p_i`` per row (``0 log 0 = 0``)."""
    return -(probs * probs.clamp_min(_LOG_FLOOR).log()).sum(dim=1)


def modified_entropy_feature(probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Compute the modified entropy (Song & Mittal 2021) of each row.

    ``Mentr(p, y) = -(1 - p_y) log p_y - sum_{i != y} p_i log(1 - p_i)``; it is 0 for a
    one-hot prediction of the true label and grows both with uncertainty and with
    confident mistakes (unlike the entropy, which ignores the label).
    """
    true = torch.nn.functional.one_hot(labels.to(torch.int64), probs.shape[1]).to(torch.bool)
    p_true = confidence_feature(probs, labels)
    true_term = -(1.0 - p_true) * p_true.clamp_min(_LOG_FLOOR).log()
    others = probs * (1.0 - probs).clamp_min(_LOG_FLOOR).log()
    return true_term - others.masked_fill(true, 0.0).sum(dim=1)


def shadow_positions(
    num_retain: int, num_test: int, *, seed: int, max_shadow: int | None
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Positions of the SVC's shadow members in D_r and shadow non-members in the test set.

    Both sides have ``n = min(num_test, num_retain, max_shadow)`` positions drawn without
    replacement from one ``numpy.random.default_rng(seed)`` (test side first). Both sorted.
    """
    if max_shadow is not None and max_shadow < 1:
        raise ValueError(f"max_shadow must be >= 1 or None, got {max_shadow}")
    if num_retain < 1 or num_test < 1:
        raise ValueError(
            f"the SVC attack needs shadow members and non-members, got {num_retain} retain and {num_test} "
            "test samples; pass a non-empty retain set and test set"
        )
    rng = np.random.default_rng(seed)
    n = min(num_test, num_retain, num_test if max_shadow is None else max_shadow)
    test_pos = np.sort(rng.choice(num_test, size=n, replace=False))
    retain_pos = np.sort(rng.choice(num_retain, size=n, replace=False))
    return retain_pos.astype(np.int64), test_pos.astype(np.int64)


def _efficacy(members: _FloatArray, non_members: _FloatArray, forget: _FloatArray) -> float:
    """Fit one RBF SVC on a 1-D feature and return the fraction of ``forget`` predicted 0."""
    x = np.concatenate([members, non_members]).reshape(-1, 1)
    y = np.concatenate([np.ones(len(members)), np.zeros(len(non_members))])
    from sklearn.svm import SVC  # imported here: scikit-learn is slow to import

    clf = SVC(C=3, kernel="rbf", gamma="auto")
    clf.fit(x, y)
    return float(np.mean(clf.predict(forget.reshape(-1, 1)) == 0))


def _features(probs: torch.Tensor, labels: torch.Tensor) -> dict[str, _FloatArray]:
    p, y = probs.detach().cpu().double(), labels.detach().cpu().to(torch.int64)
    return {
        "confidence": confidence_feature(p, y).numpy(),
        "entropy": entropy_feature(p).numpy(),
        "modified_entropy": modified_entropy_feature(p, y).numpy(),
    }


def mia_from_shadow_probabilities(
    p_forget: torch.Tensor,
    y_forget: torch.Tensor,
    p_members: torch.Tensor,
    y_members: torch.Tensor,
    p_non_members: torch.Tensor,
    y_non_members: torch.Tensor,
) -> MIAResult:
    """SVC MIA-efficacy from probabilities of an already chosen shadow set (no subsampling)."""
    if len(p_members) == 0 or len(p_non_members) == 0:
        raise ValueError(f"the MIA needs shadow members and non-members, got {len(p_members)} and {len(p_non_members)}")
    scores = {"confidence": math.nan, "entropy": math.nan, "modified_entropy": math.nan}
    if len(p_forget):
        f_members, f_non = _features(p_members, y_members), _features(p_non_members, y_non_members)
        f_forget = _features(p_forget, y_forget)
        scores = {name: _efficacy(f_members[name], f_non[name], f_forget[name]) for name in f_forget}
    return MIAResult(
        confidence=scores["confidence"],
        entropy=scores["entropy"],
        modified_entropy=scores["modified_entropy"],
        num_forget=len(p_forget),
        num_shadow_members=len(p_members),
        num_shadow_non_members=len(p_non_members),
    )


def mia_from_probabilities(
    p_forget: torch.Tensor,
    y_forget: torch.Tensor,
    p_retain: torch.Tensor,
    y_retain: torch.Tensor,
    p_test: torch.Tensor,
    y_test: torch.Tensor,
    *,
    seed: int,
    max_shadow: int | None,
) -> MIAResult:
    """SVC MIA-efficacy from softmax probabilities (rows) and true labels of D_f, D_r and test.

    The shadow set is ``shadow_positions(len(p_retain), len(p_test), seed=seed,
    max_shadow=max_shadow)``, as in ``mia_svc``. Raises ValueError for an empty retain or
    test set; returns ``nan`` efficacies for an empty forget set.
    """
    retain_pos, test_pos = shadow_positions(len(p_retain), len(p_test), seed=seed, max_shadow=max_shadow)
    r_idx, t_idx = torch.from_numpy(retain_pos), torch.from_numpy(test_pos)
    return mia_from_shadow_probabilities(
        p_forget, y_forget, p_retain[r_idx], y_retain[r_idx], p_test[t_idx], y_test[t_idx]
    )


def probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Softmax in float64 (keeps ``1 - p`` accurate for confident predictions)."""
    return torch.softmax(logits.double(), dim=1)


def mia_svc(
    model: nn.Module,
    *,
    forget: IndexedDataset,
    retain: IndexedDataset,
    test: IndexedDataset,
    seed: int = 0,
    max_shadow: int | None = DEFAULT_MAX_SHADOW,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: torch.device | str | None = None,
) -> MIAResult:
    """SVC MIA-efficacy of ``model`` on ``forget`` (Jia et al. 2023; SalUn), for comparisons.

    Not the headline MIA (``membership_score``): on a model whose member and non-member
    confidences are both near 1 its decision boundary is arbitrary, and the efficacy can
    jump between 0 and 1 for models of equal accuracy. ``max_shadow`` caps each side of the
    shadow set (``None``: the whole test set, as published; the SVC is O(n^2)).
    """
    retain_pos, test_pos = shadow_positions(len(retain), len(test), seed=seed, max_shadow=max_shadow)
    members, non_members = retain.select(retain_pos), test.select(test_pos)
    logits = [predict_logits(model, ds, batch_size=batch_size, device=device) for ds in (forget, members, non_members)]
    result = mia_from_shadow_probabilities(
        probabilities(logits[0]),
        forget.labels,
        probabilities(logits[1]),
        members.labels,
        probabilities(logits[2]),
        non_members.labels,
    )
    logger.debug("SVC MIA-efficacy %s", result)
    return result


#: The name other modules and earlier releases use for ``mia_svc``.
mia_efficacy = mia_svc
