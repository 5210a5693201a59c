"""SFR-on: fast masked adaptive ascent on D_f, slow remain-preserving descent on D_r.

ALGORITHMS.md, "SFR-on (fast-slow, remain-preserving) — as in the official code" (Huang et
al., NeurIPS 2024; K1nght/Unified-Unlearning-w-Remain-Geometry,
``Classification/unlearn/sfron.py``, read at commit 36bb7f6). Where we follow the code:

- saliency mask from the diagonal Fisher ratio (``fedunlearn.unlearning.saliency``);
- adaptive forget loss ``-a_t * sum_i w_i l_i`` with ``w_i = l_i^-lambda / sum_j l_j^-lambda``
  detached (the code's ``AdaptiveLoss``: ``coef / coef.sum() * l * B`` then ``mean``), and
  ``a_t = forget_scale * (1 + cos(pi t / n_iters)) / 2`` with t the iteration index;
- one SGD optimizer (momentum, weight decay) for both kinds of step, its lr cosine-annealed
  over ``n_iters`` (``CosineAnnealingLR(T_max=n_iters)`` stepped once per iteration);
- iteration t: if ``t % forget_freq == 0`` one forget step (backward, ``grad *= M``, clip
  the total grad norm to ``clip_norm``, step), then always one remain step (plain mean CE
  on a D_r batch, no mask, no clip, step); both in train mode; D_f and D_r batches are
  drawn cyclically from reshuffled passes (the code's ``cycle(DataLoader(shuffle=True))``);
- no separate slow copy and no interpolation (the code's EMA hook has beta = 1: a no-op).

Where we chose: the weights are computed as ``softmax(-lambda * log l_i)`` with ``l_i``
clamped at the dtype's smallest normal number (the code adds 1e-15 to ``l_i^lambda``; the
two agree unless a loss is ~0); the lr of iteration t is set in closed form
``lr * (1 + cos(pi t / n_iters)) / 2`` instead of by the scheduler's recursion (equal in
exact arithmetic), which lets a federated server run iterations out of one process. As in
the code, weight decay and momentum act on every entry in a forget step, so entries outside
M still move a little unless both are 0. Defaults are scaled down (``iters`` 150, see
``SFROnSettings``); the code's are for CIFAR-10 ResNet-18 (1500 iterations).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import nn

from fedunlearn.config import Checks, MethodSettings
from fedunlearn.data.indexed import IndexedDataset
from fedunlearn.errors import UnlearningError
from fedunlearn.metrics.accuracy import model_device
from fedunlearn.types import Delta
from fedunlearn.unlearning.base import MethodTraits
from fedunlearn.unlearning.common import (
    Workspace,
    check_loss,
    derive_generator,
    float_state,
    state_difference,
    unlearning_method,
)
from fedunlearn.unlearning.remain import batch_stream, ce_step
from fedunlearn.unlearning.saliency import Mask, build_saliency_mask, check_same_layout


@dataclass(frozen=True)
class SFROnSettings(MethodSettings):
    """SFR-on's settings (``unlearn.sfr_on.*``), named as in the official code.

    ``iters`` (n_iters), ``forget_freq``, ``temperature`` (lambda), ``forget_scale`` (a_0 of
    a_t), ``clip_norm``, ``saliency`` (mask rule: ``fisher``, ``salun_topk`` or ``none``),
    ``saliency_gamma``, and the one optimizer of both kinds of step: ``lr`` (cosine-annealed
    over ``iters``), ``momentum``, ``weight_decay``, ``batch_size``. Defaults are the
    official code's, with ``iters`` scaled down from 1500.

    ``temperature`` 0 gives every deleted record the same weight (plain masked ascent, a
    deviation). With the official 0.5 the weights ``l_i^-0.5`` pile onto the record the
    model fits best; when that loss is ~0 (a memorised poisoned or backdoored record) so
    is its gradient, and the fast steps barely move the model (docs/SFR_ON.md).

    Federated (documented deviations, each a setting): ``local_remain`` has the forgetting
    client interleave the remain steps of its iterations on its own retained data, under the
    one optimizer, as the official loop does (False: its forget steps back to back); the
    other clients run the remain steps as the slow part with this same SGD (``slow_optimizer``:
    ``lr`` cosine-annealed at the outer step's iterations, ``momentum``, ``weight_decay``),
    a fresh optimizer state per outer step (momentum does not cross messages).
    ``fisher_max_batches`` caps the Fisher passes (None: all of the retained data).
    ``momentum_carry``: a forgetting client with no remain step of its own in an iteration
    (a whole-client deletion, or ``local_remain`` off) still steps its optimizer on a zero
    gradient, so each forget gradient keeps acting through the momentum for the following
    iterations as it does in the official loop (False: it stops after its own step, and the
    forget steps move the model several times less; docs/SFR_ON.md).
    """

    iters: int = 150
    forget_freq: int = 5
    temperature: float = 0.5
    forget_scale: float = 25.0
    clip_norm: float = 7.0
    saliency: str = "fisher"
    saliency_gamma: float = 1.0
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 128
    local_remain: bool = True
    fisher_max_batches: int | None = None
    momentum_carry: bool = True

    def slow_optimizer(self, outer_step: int) -> tuple[float, float, float] | None:
        """SFR-on's SGD at the middle of ``outer_step``'s iterations (cosine-annealed lr)."""
        per_step = max(1, math.ceil(self.iters / self.outer_steps))
        middle = min(self.iters - 1, outer_step * per_step + per_step // 2)
        return self.lr * cosine_factor(middle, self.iters), self.momentum, self.weight_decay

    def check(self, checks: Checks) -> None:
        """Add SFR-on's problems."""
        super().check(checks)
        for name in ("iters", "forget_freq", "batch_size"):
            checks.at_least(name.replace("_", "-"), getattr(self, name), 1)
        for name in ("clip_norm", "saliency_gamma", "lr"):
            checks.positive(name.replace("_", "-"), getattr(self, name))
        checks.non_negative("temperature", self.temperature)
        checks.non_negative("forget-scale", self.forget_scale)
        checks.non_negative("weight-decay", self.weight_decay)
        checks.in_range("momentum", self.momentum, 0.0, 1.0)
        checks.at_least("fisher-max-batches", self.fisher_max_batches, 1, optional=True)


def adaptive_weights(losses: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per-sample weights ``w_i = softmax(-lambda * log l_i)`` = ``l_i^-lambda / sum_j l_j^-lambda``, detached.

    Samples the model still fits (small loss) weigh more (Huang et al. 2024, adaptive
    gradient ascent; ``temperature`` is lambda).

    >>> [round(w, 4) for w in adaptive_weights(torch.tensor([1.0, 4.0]), 0.5).tolist()]
    [0.6667, 0.3333]
    """
    detached = losses.detach()
    tiny = torch.finfo(detached.dtype).tiny
    return torch.softmax(-temperature * torch.log(detached.clamp_min(tiny)), dim=0)


def adaptive_forget_loss(
    logits: torch.Tensor, labels: torch.Tensor, *, temperature: float, coefficient: float
) -> torch.Tensor:
    """SFR-on's forget loss ``-a_t * sum_i w_i CE_i`` (minimising it ascends the weighted CE)."""
    losses = nn.functional.cross_entropy(logits, labels, reduction="none")
    return -coefficient * (adaptive_weights(losses, temperature) * losses).sum()


def cosine_factor(t: int, n_iters: int) -> float:
    """``(1 + cos(pi t / n_iters)) / 2``: the schedule of both a_t and the learning rate."""
    return (1.0 + math.cos(math.pi * t / n_iters)) / 2.0


def masked_forget_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    *,
    mask: Mask | None,
    coefficient: float,
    temperature: float,
    clip_norm: float,
    step: int = 0,
) -> float:
    """One fast step: adaptive forget loss, ``grad *= mask``, clip the grad norm, optimizer step.

    ``mask`` maps parameter names to 0/1 tensors of the parameters' dtype and device (None:
    no mask). Returns the adaptive loss (before the step); UnlearningError if it is NaN/Inf.
    """
    optimizer.zero_grad(set_to_none=True)
    loss = adaptive_forget_loss(model(inputs), labels, temperature=temperature, coefficient=coefficient)
    value = check_loss(loss, what="SFR-on forget step", step=step)
    torch.autograd.backward(loss)
    if mask is not None:
        for name, param in model.named_parameters():
            if param.grad is not None:
                param.grad.mul_(mask[name])
    nn.utils.clip_grad_norm_(model.parameters(), max_norm=clip_norm)
    optimizer.step()
    return value


class SFROnSession:
    """SFR-on iterations on a private copy of a model, one step at a time.

    The registered ``sfr_on`` method runs ``run()``; a federated server can instead call
    ``forget_step(t)`` (fast) and ``remain_step(t)`` (slow) on different parties' sessions
    and combine their ``delta()``s. ``retain=None`` gives a forget-only session (the
    forgetting client's fast part). Batches are shuffled with generators derived from
    ``seed``; dropout draws from torch's global RNG, which the caller seeds.

    >>> data = IndexedDataset(torch.randn(4, 2), torch.tensor([0, 1, 0, 1]), torch.arange(4), 2)
    >>> session = SFROnSession(nn.Linear(2, 2), forget=data, retain=None, mask=None,
    ...                        settings=SFROnSettings(iters=3, forget_freq=1), seed=0)
    >>> session.run(remain=False); session.forget_steps
    3
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        forget: IndexedDataset,
        retain: IndexedDataset | None,
        mask: Mask | None,
        settings: SFROnSettings,
        seed: int,
        device: torch.device | None = None,
    ) -> None:
        self.settings = config = settings
        self.home = model_device(model)
        self.device = device or self.home
        self.model = copy.deepcopy(model).to(self.device)
        self._start = float_state(self.model)
        self.optimizer = torch.optim.SGD(
            self.model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
        )
        self.mask = self._prepare_mask(mask)
        bs = config.batch_size
        self._forget = (
            None
            if len(forget) == 0
            else batch_stream(forget, bs, generator=derive_generator(seed, "sfr_on/forget"), device=self.device)
        )
        self._retain = (
            None
            if retain is None or len(retain) == 0
            else batch_stream(retain, bs, generator=derive_generator(seed, "sfr_on/remain"), device=self.device)
        )
        self.forget_steps = 0
        self.remain_steps = 0

    def _prepare_mask(self, mask: Mask | None) -> Mask | None:
        if mask is None:
            return None
        params = dict(self.model.named_parameters())
        check_same_layout(params, mask, what="saliency mask")
        return {n: mask[n].to(device=self.device, dtype=p.dtype) for n, p in params.items()}

    def _begin(self, t: int) -> None:
        """Set iteration t's learning rate and train mode."""
        n = self.settings.iters
        if not 0 <= t < n:
            raise ValueError(f"iteration t must be in [0, {n}) (settings.iters), got {t}")
        for group in self.optimizer.param_groups:
            group["lr"] = self.settings.lr * cosine_factor(t, n)
        self.model.train()

    def forget_step(self, t: int) -> float:
        """Run the fast step of iteration t (masked adaptive ascent on a D_f batch); return its loss."""
        if self._forget is None:
            raise UnlearningError("SFR-on forget step: D_f is empty")
        self._begin(t)
        batch = next(self._forget)
        cfg = self.settings
        value = masked_forget_step(
            self.model,
            self.optimizer,
            batch.inputs,
            batch.labels,
            mask=self.mask,
            coefficient=cfg.forget_scale * cosine_factor(t, cfg.iters),
            temperature=cfg.temperature,
            clip_norm=cfg.clip_norm,
            step=self.forget_steps,
        )
        self.forget_steps += 1
        return value

    def remain_step(self, t: int) -> float:
        """Run the slow step of iteration t (plain CE descent on a D_r batch); return its loss."""
        if self._retain is None:
            raise UnlearningError("D_r is empty; SFR-on remain steps need retained samples")
        self._begin(t)
        batch = next(self._retain)
        value = ce_step(self.model, self.optimizer, batch, what="SFR-on remain step", step=self.remain_steps)
        self.remain_steps += 1
        return value

    def coast_step(self, t: int) -> None:
        """Step iteration t's optimizer on a zero gradient: only momentum and weight decay act.

        The forget part of an iteration whose remain step runs elsewhere (another party's
        data): by linearity of SGD with momentum, the official update of iteration t is this
        step plus that remain step.
        """
        self._begin(t)
        for param in self.model.parameters():
            param.grad = torch.zeros_like(param)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def iteration(self, t: int, *, remain: bool = True, coast: bool = False) -> None:
        """Run iteration t: a forget step when ``t % forget_freq == 0``, then a remain step (if
        ``remain``), else (with ``coast``) a zero-gradient step that carries the momentum."""
        if t % self.settings.forget_freq == 0:
            self.forget_step(t)
        if remain:
            self.remain_step(t)
        elif coast and self.forget_steps:
            self.coast_step(t)

    def run(self, *, remain: bool = True) -> None:
        """All ``settings.iters`` iterations (``remain=False``: the fast steps only)."""
        for t in range(self.settings.iters):
            self.iteration(t, remain=remain)

    def delta(self) -> Delta:
        """Return the change of every float state entry since the session began (on the model's device)."""
        return {k: v.to(self.home) for k, v in state_difference(float_state(self.model), self._start).items()}


@unlearning_method(
    "sfr_on",
    settings=SFROnSettings,
    traits=MethodTraits(needs_retain=True, needs_remain_fisher=True, fast="spread", strengthen="repeat"),
)
def sfr_on(ws: Workspace) -> Delta:
    """SFR-on as in the official code (see the module docstring).

    Reads ``saliency`` (``fisher`` | ``salun_topk`` | ``none``), ``saliency_gamma``,
    ``batch_size``, ``sfr_iters``, ``forget_freq``, ``temperature``, ``forget_scale``,
    ``clip_norm``, ``sfr_lr``, ``momentum``, ``weight_decay``, ``context.remain_fisher``
    (used instead of F_r on D_r when given) and ``context.seed``. The cost counts the Fisher
    passes, also reported separately in ``cost.extra``.
    """
    saliency = build_saliency_mask(ws.model, split=ws.split, config=ws.settings, context=ws.context)
    session = SFROnSession(
        ws.model,
        forget=ws.split.forget,
        retain=ws.split.retain,
        mask=saliency.mask,
        settings=ws.settings,
        seed=ws.context.seed,
        device=ws.device,
    )
    session.run()
    fisher_batches = saliency.forget_batches + saliency.remain_batches
    ws.cost.forward_backward += fisher_batches + session.forget_steps + session.remain_steps
    ws.cost.extra.update(
        saliency=ws.settings.saliency,
        mask_fraction=saliency.fraction,
        fisher_forget_batches=saliency.forget_batches,
        fisher_remain_batches=saliency.remain_batches,
        fisher_seconds=saliency.seconds,
        forget_steps=session.forget_steps,
        remain_steps=session.remain_steps,
    )
    return session.delta()
