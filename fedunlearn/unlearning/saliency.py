"""Weight-saliency masks for SFR-on: the diagonal-Fisher ratio rule, SalUn's top-k rule, none.

ALGORITHMS.md, "SFR-on", saliency mask (Huang et al. 2024, official code
``Classification/unlearn/sfron.py``, ``get_weight_saliency_mask``):

- ``diagonal_fisher``: ``F = mean over mini-batches of (grad of the batch-mean CE)^2`` with
  the model in eval mode and true labels, per parameter entry. This is what the official
  code computes (squared mini-batch gradients summed and divided by the number of batches),
  so F depends on the batch size; use the same batch size on both sides.
- ``saliency_mask``: ``M = [(F_f + eps) / (F_r + eps) >= gamma]`` with eps = 1e-15, gamma = 1
  by default: no fixed fraction, no per-layer quota.
- ``salun_topk_mask``: SalUn's rule (Fan et al., ICLR 2024; the SFR-on repository's
  ``unlearn/salun.py``), offered for comparison only: the entries whose
  ``|sum over D_f batches of grad(-CE)|`` is among the top ``keep_fraction`` (0.5, SalUn's
  default sparsity) of ALL entries of the model ranked together (a global, not per-layer, top-k).

Rules are registered by name (``settings.saliency`` of ``SFROnSettings``): ``"fisher"``,
``"salun_topk"``, ``"none"``. A rule reads only ``saliency``, ``saliency_gamma`` and
``batch_size`` (the ``SaliencySettings`` protocol), so any settings object with those fields
(SFR-on's, or a federated site's) can build a mask.
With ``context.remain_fisher`` given (federated: the remaining clients' Fisher, averaged by
the server), the fisher rule uses it instead of computing F_r on ``split.retain``.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from fedunlearn.data.indexed import IndexedDataset
from fedunlearn.errors import UnknownNameError, UnlearningError
from fedunlearn.metrics.accuracy import model_device
from fedunlearn.unlearning.base import ForgetRetainSplit, UnlearnContext
from fedunlearn.unlearning.common import check_loss, derive_generator, require_retain

#: epsilon of the Fisher ratio (official code: ``1e-15``).
FISHER_EPS = 1e-15
#: fraction of all entries SalUn's mask keeps (SalUn's default sparsity, 50%).
SALUN_KEEP_FRACTION = 0.5

Mask = dict[str, torch.Tensor]


@contextmanager
def _eval_with_grad(model: nn.Module) -> Iterator[None]:
    """Eval mode (gradients on) for the block; restore every submodule's train flag after."""
    flags = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        with torch.enable_grad():
            yield
    finally:
        for module, was_training in flags:
            module.training = was_training


def _batch_gradients(
    model: nn.Module,
    dataset: IndexedDataset,
    *,
    batch_size: int,
    max_batches: int | None,
    sign: float,
    shuffle_seed: int | None,
) -> Iterator[dict[str, torch.Tensor]]:
    """Per mini-batch, the gradient of ``sign * mean CE`` per parameter.

    Batches are drawn from a pass shuffled with ``shuffle_seed`` (None: dataset order).

    Frozen or unused parameters get zeros. ``.grad`` fields are not touched.
    """
    if len(dataset) == 0:
        raise UnlearningError("a saliency/Fisher pass needs at least one sample, got an empty dataset")
    device = model_device(model)
    named = list(model.named_parameters())
    trainable = [(n, p) for n, p in named if p.requires_grad]
    with _eval_with_grad(model):
        generator = None if shuffle_seed is None else derive_generator(shuffle_seed, "saliency/shuffle")
        batches = dataset.batches(batch_size, shuffle=generator is not None, generator=generator, device=device)
        for step, batch in enumerate(itertools.islice(batches, max_batches)):
            loss = nn.functional.cross_entropy(model(batch.inputs), batch.labels)
            check_loss(loss, what="saliency pass", step=step)
            grads = torch.autograd.grad(sign * loss, [p for _, p in trainable], allow_unused=True)
            found = {n: g for (n, _), g in zip(trainable, grads, strict=True) if g is not None}
            yield {
                n: found[n].detach().float() if n in found else torch.zeros_like(p, dtype=torch.float32)
                for n, p in named
            }


def num_passes(dataset: IndexedDataset, *, batch_size: int, max_batches: int | None = None) -> int:
    """How many mini-batches a saliency pass over ``dataset`` computes."""
    n = dataset.num_batches(batch_size)
    return n if max_batches is None else min(n, max_batches)


def diagonal_fisher(
    model: nn.Module,
    dataset: IndexedDataset,
    *,
    batch_size: int,
    max_batches: int | None = None,
    shuffle_seed: int | None = 0,
) -> dict[str, torch.Tensor]:
    """Diagonal empirical Fisher: mean over mini-batches of the squared batch-mean CE gradient.

    Eval mode, true labels. F depends on how samples are grouped into batches (a squared
    batch mean), so batches come from one pass shuffled with ``shuffle_seed``, as the
    official code's shuffling loader does (None: dataset order; a class-sorted dataset in
    order would give single-class batches and a larger F); ``max_batches`` caps the pass.
    ``model`` is not changed. Returns float32 CPU tensors by parameter name (one
    model-sized message in the federated protocol).

    >>> data = IndexedDataset(torch.randn(6, 2), torch.tensor([0, 1] * 3), torch.arange(6), 2)
    >>> fisher = diagonal_fisher(nn.Linear(2, 2), data, batch_size=4)
    >>> sorted(fisher), bool((fisher["weight"] >= 0).all())
    (['bias', 'weight'], True)
    """
    total: dict[str, torch.Tensor] | None = None
    count = 0
    for grads in _batch_gradients(
        model, dataset, batch_size=batch_size, max_batches=max_batches, sign=1.0, shuffle_seed=shuffle_seed
    ):
        squares = {n: g * g for n, g in grads.items()}
        total = squares if total is None else {n: total[n] + squares[n] for n in total}
        count += 1
    assert total is not None
    return {n: (t / count).cpu() for n, t in total.items()}


def saliency_mask(
    forget_fisher: Mapping[str, torch.Tensor],
    remain_fisher: Mapping[str, torch.Tensor],
    *,
    gamma: float = 1.0,
    eps: float = FISHER_EPS,
) -> Mask:
    """SFR-on's mask ``M = [(F_f + eps) / (F_r + eps) >= gamma]`` (bool tensors, per entry).

    Computed in float32 like the official code (so ``2 + 1e-15`` is 2 and a ratio of exactly
    gamma is kept).

    >>> saliency_mask({"w": torch.tensor([2.0, 1.0, 0.0])}, {"w": torch.tensor([1.0, 2.0, 0.0])})["w"].tolist()
    [True, False, True]
    """
    check_same_layout(forget_fisher, remain_fisher, what="remain Fisher")
    return {
        name: ((f.float() + eps) / (remain_fisher[name].to(f.device).float() + eps)) >= gamma
        for name, f in forget_fisher.items()
    }


def salun_topk_mask(
    model: nn.Module,
    forget: IndexedDataset,
    *,
    batch_size: int,
    keep_fraction: float = SALUN_KEEP_FRACTION,
    shuffle_seed: int | None = 0,
) -> Mask:
    """SalUn's mask: the global top ``keep_fraction`` of ``|sum_batches grad(-CE on D_f)|``.

    All entries of all layers are ranked together, as in SalUn's code; ``int(n *
    keep_fraction)`` entries are kept. Bool CPU tensors by parameter name.
    """
    total: dict[str, torch.Tensor] | None = None
    for grads in _batch_gradients(
        model, forget, batch_size=batch_size, max_batches=None, sign=-1.0, shuffle_seed=shuffle_seed
    ):
        total = grads if total is None else {n: total[n] + grads[n] for n in total}
    assert total is not None
    flat = torch.cat([t.abs().reshape(-1) for t in total.values()]).cpu()
    keep = torch.zeros(flat.numel(), dtype=torch.bool)
    keep[torch.topk(flat, int(flat.numel() * keep_fraction), sorted=False).indices] = True
    sizes = [t.numel() for t in total.values()]
    return {n: part.view(t.shape) for (n, t), part in zip(total.items(), torch.split(keep, sizes), strict=True)}


def check_same_layout(
    reference: Mapping[str, torch.Tensor], candidate: Mapping[str, torch.Tensor], *, what: str
) -> None:
    """Raise UnlearningError unless ``candidate`` has ``reference``'s names and shapes."""
    problems = [n for n in reference if n not in candidate or tuple(candidate[n].shape) != tuple(reference[n].shape)]
    extra = [n for n in candidate if n not in reference]
    if problems or extra:
        raise UnlearningError(
            f"the {what} does not match the model's parameters (missing or misshaped: {problems[:5]}, "
            f"unexpected: {extra[:5]}); compute it with the same model architecture"
        )


@dataclass(frozen=True)
class SaliencyResult:
    """A mask (None: no masking) and what building it cost."""

    mask: Mask | None
    forget_batches: int
    remain_batches: int
    seconds: float

    @property
    def fraction(self) -> float:
        """Fraction of entries the mask keeps (1.0 without a mask)."""
        if self.mask is None:
            return 1.0
        total = sum(m.numel() for m in self.mask.values())
        return sum(int(m.sum()) for m in self.mask.values()) / total if total else math.nan


class SaliencySettings(Protocol):
    """What a mask rule reads from a method's settings (``SFROnSettings`` has all three)."""

    @property
    def saliency(self) -> str:
        """Name of the registered mask rule."""
        ...

    @property
    def saliency_gamma(self) -> float:
        """Threshold gamma of the Fisher-ratio rule."""
        ...

    @property
    def batch_size(self) -> int:
        """Mini-batch size of the Fisher / gradient passes."""
        ...


SaliencyRule = Callable[[nn.Module, ForgetRetainSplit, SaliencySettings, UnlearnContext], SaliencyResult]
_RULES: dict[str, SaliencyRule] = {}


def register_saliency_rule(name: str) -> Callable[[SaliencyRule], SaliencyRule]:
    """Register a mask rule under ``name`` (selected by ``settings.saliency``)."""

    def decorator(rule: SaliencyRule) -> SaliencyRule:
        if name in _RULES:
            raise ValueError(f"saliency rule {name!r} is registered twice")
        _RULES[name] = rule
        return rule

    return decorator


def available_saliency_rules() -> list[str]:
    """Return the registered saliency rule names, sorted."""
    return sorted(_RULES)


def build_saliency_mask(
    model: nn.Module, *, split: ForgetRetainSplit, config: SaliencySettings, context: UnlearnContext
) -> SaliencyResult:
    """Build the mask ``config.saliency`` names; UnknownNameError lists the registered rules."""
    rule = _RULES.get(config.saliency)
    if rule is None:
        raise UnknownNameError("saliency rule", config.saliency, _RULES)
    start = time.perf_counter()
    result = rule(model, split, config, context)
    return SaliencyResult(result.mask, result.forget_batches, result.remain_batches, time.perf_counter() - start)


@register_saliency_rule("fisher")
def _fisher_rule(
    model: nn.Module, split: ForgetRetainSplit, config: SaliencySettings, context: UnlearnContext
) -> SaliencyResult:
    bs = config.batch_size
    forget = diagonal_fisher(model, split.forget, batch_size=bs, shuffle_seed=context.seed)
    if context.remain_fisher is not None:
        remain, remain_batches = dict(context.remain_fisher), 0
    else:
        require_retain(split, "sfr_on (remain Fisher)")
        remain = diagonal_fisher(model, split.retain, batch_size=bs, shuffle_seed=context.seed)
        remain_batches = num_passes(split.retain, batch_size=bs)
    mask = saliency_mask(forget, remain, gamma=config.saliency_gamma)
    return SaliencyResult(mask, num_passes(split.forget, batch_size=bs), remain_batches, 0.0)


@register_saliency_rule("salun_topk")
def _salun_rule(
    model: nn.Module, split: ForgetRetainSplit, config: SaliencySettings, context: UnlearnContext
) -> SaliencyResult:
    mask = salun_topk_mask(model, split.forget, batch_size=config.batch_size, shuffle_seed=context.seed)
    return SaliencyResult(mask, num_passes(split.forget, batch_size=config.batch_size), 0, 0.0)


@register_saliency_rule("none")
def _no_mask(
    model: nn.Module, split: ForgetRetainSplit, config: SaliencySettings, context: UnlearnContext
) -> SaliencyResult:
    return SaliencyResult(None, 0, 0, 0.0)
