"""MIA-efficacy: membership inference on the forget set (SalUn / Jia et al. convention).

The attack (Jia et al. 2023, "Model sparsity can simplify machine unlearning", NeurIPS;
used unchanged by SalUn, Fan et al. 2024, "SalUn: Empowering machine unlearning via gradient-
based weight saliency", ICLR, and by SFR-on, Huang et al. 2024) is trained on the model's
own outputs:

- shadow members: a random subset of the retain set D_r as large as the shadow non-member set;
- shadow non-members: the test set;
- one feature per attack: the confidence in the true label ``p_y``, the prediction entropy
  ``-sum_i p_i log p_i``, or the modified entropy of Song & Mittal 2021 ("Systematic
  evaluation of privacy risks of machine learning models", USENIX Security),
  ``Mentr(p, y) = -(1 - p_y) log p_y - sum_{i != y} p_i log(1 - p_i)``;
- one ``SVC(C=3, kernel='rbf', gamma='auto')`` per feature, members labelled 1,
  non-members 0.

MIA-efficacy is the fraction of D_f the attack predicts as *non-member*: high means the
model treats the forgotten samples like unseen data. The confidence attack's value is the
headline "MIA" number (ALGORITHMS.md, Metrics); entropy and modified entropy are extras.

Interpretations (see also the functions' docstrings):

- ``max_shadow`` caps each side of the shadow set (default ``DEFAULT_MAX_SHADOW`` = 2000):
  the SVC costs O(n^2) in time and memory, and a 10,000-sample test set would make every
  evaluation take minutes. Both sides have the same size
  ``n = min(len(test), len(retain), max_shadow)``: a seeded random subset of the test set
  (non-members) and one of D_r (members), so the attack's classes stay balanced even when
  D_r is smaller than the test set. ``max_shadow=None`` with ``len(retain) >= len(test)``
  reproduces the published protocol (all of the test set).
- SalUn's reference code picks the first ``len(test)`` retain samples; we draw them at random
  (seeded), as ALGORITHMS.md asks.
- Modified entropy follows the formula above. SalUn's released ``m_entropy`` differs from it
  (it takes ``log p`` where ``log(1 - p)`` is meant and indexes whole label columns), so its
  modified-entropy numbers are not comparable with ours; the confidence attack is unaffected.
- Logarithms clamp their argument at 1e-30, as the reference code does, so features stay
  finite for one-hot predictions.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from fedunlearn.data.indexed import IndexedDataset
from fedunlearn.metrics.accuracy import DEFAULT_BATCH_SIZE, predict_logits

logger = logging.getLogger(__name__)

_LOG_FLOOR = 1e-30
#: Default cap on each side of the shadow set (the SVC is O(n^2)).
DEFAULT_MAX_SHADOW = 2000
_FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class MIAResult:
    """MIA-efficacy of the three attacks, each the fraction of D_f predicted non-member.

    ``value`` is the confidence attack's efficacy, the number reported as "MIA". All three
    are ``nan`` for an empty forget set.

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
        """The headline MIA-efficacy (confidence feature, as in SalUn's tables)."""
        return self.confidence


# ------------------------------------------------------------------------------ features


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


# -------------------------------------------------------------------------------- attack


def shadow_positions(
    num_retain: int, num_test: int, *, seed: int, max_shadow: int | None
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Positions of the shadow members in D_r and of the shadow non-members in the test set.

    Both sides have ``n = min(num_test, num_retain, max_shadow)`` positions drawn without
    replacement from one ``numpy.random.default_rng(seed)`` (test side first). Both sorted.
    """
    if max_shadow is not None and max_shadow < 1:
        raise ValueError(f"max_shadow must be >= 1 or None, got {max_shadow}")
    if num_retain < 1 or num_test < 1:
        raise ValueError(
            f"the MIA needs shadow members and non-members, got {num_retain} retain and {num_test} "
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
    from sklearn.svm import SVC  # imported here: scikit-learn takes seconds to import, and most callers never fit

    clf = SVC(C=3, kernel="rbf", gamma="auto")
    clf.fit(x, y)
    predicted = clf.predict(forget.reshape(-1, 1))
    return float(np.mean(predicted == 0))


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
    """MIA-efficacy from probabilities of an already chosen shadow set (no subsampling)."""
    if len(p_members) == 0 or len(p_non_members) == 0:
        raise ValueError(f"the MIA needs shadow members and non-members, got {len(p_members)} and {len(p_non_members)}")
    if len(p_forget) == 0:
        scores = {"confidence": math.nan, "entropy": math.nan, "modified_entropy": math.nan}
    else:
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
    """MIA-efficacy from softmax probabilities (rows) and true labels of D_f, D_r and test.

    The shadow set is drawn with ``shadow_positions(len(p_retain), len(p_test), seed=seed,
    max_shadow=max_shadow)``, so this gives the same result as ``mia_efficacy`` on a model
    whose probabilities these are. Raises ValueError for an empty retain or test set;
    returns ``nan`` efficacies for an empty forget set.
    """
    retain_pos, test_pos = shadow_positions(len(p_retain), len(p_test), seed=seed, max_shadow=max_shadow)
    r_idx, t_idx = torch.from_numpy(retain_pos), torch.from_numpy(test_pos)
    return mia_from_shadow_probabilities(
        p_forget, y_forget, p_retain[r_idx], y_retain[r_idx], p_test[t_idx], y_test[t_idx]
    )


def probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Softmax in float64 (keeps ``1 - p`` accurate for confident predictions)."""
    return torch.softmax(logits.double(), dim=1)


def mia_efficacy(
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
    """MIA-efficacy of ``model`` on ``forget`` (Jia et al. 2023; Fan et al. 2024, SalUn).

    Only the shadow subsets are run through the model, so a large retain set costs nothing
    extra. ``max_shadow`` caps each side of the shadow set (default 2000; ``None``: the whole
    test set, as published, but the SVC is O(n^2)). See the module docstring.
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
    logger.debug("MIA-efficacy %s", result)
    return result
