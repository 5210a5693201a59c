"""PGA: projected gradient ascent within an L2 ball around a reference model (Halimi et al. 2022).

Halimi, Kadhe, Rawat, Baracaldo, "Federated Unlearning: How to Efficiently Erase a Client in
FL?" (arXiv 2207.05521); official code IBM/federated-unlearning, ``federated_unlearning.ipynb``
(read at commit 6f51bbc). The forgetting client maximises the CE of its data,
``max_{||w - w_ref||_2 <= delta} F_i(w)``, by ``w <- P(w + eta * grad F_i(w))`` where P projects
onto the ball; "a few FL rounds" without the client then repair the model. In fedunlearn
those rounds are the phase's slow steps (the remaining clients' remain corrections of
``server.unlearning_phase``), so this module is only the client's part.

Where we follow the code:

- the step: SGD (lr ``settings.lr``, momentum ``PGA_MOMENTUM`` = 0.9) on ``-CE`` of a D_f batch
  (true labels), the gradient's total norm clipped to ``PGA_CLIP_NORM`` = 5, then projection
  of the whole parameter vector (``parameters_to_vector``; buffers are not projected) onto the
  ball, after every step; ``settings.epochs`` passes (the code's 5 is our default), at most
  ``settings.max_steps`` steps;
- the radius: the code computes ``threshold = mean_i ||w_ref - w_rand,i||^2 / 3`` over 10
  freshly initialised models (``Utils.get_distance`` returns the *squared* norm) and
  projects to radius ``sqrt(threshold)``. So ``delta = sqrt(mean_i ||w_ref - w_rand,i||^2 / 3)``,
  about ``||w_ref - w_rand|| / sqrt(3)``, not ``/ 3``. Random models come from
  ``context.model_factory()`` under the seeded RNG.

Where we chose:

- reference model: Halimi et al. use the average of the *other* clients' last local models,
  ``w_ref = (N w^T - w_i^{T-1}) / (N - 1)``, which the target client can form only from its own
  last local model. Our clients do not keep that model, so ``w_ref`` is the model the client
  is given (the current global model). With FedAvg that model is the other clients' average
  plus the client's own ``n_i / n`` share, so the ball is centred slightly towards the client.
- stopping: the paper stops "if the validation accuracy drops below a threshold tau"; the
  code stops when the squared distance to the client's own last local model exceeds 2.2.
  Neither is available to a client here (no validation split in ``ForgetRetainSplit``, no
  kept local model). We stop once the mean CE on D_f reaches ``ln(num_classes)``
  (``stop_loss``): the model then predicts D_f no better than a uniform guess, and further
  ascent only wanders inside the ball. Also ``settings.target_fa``, when set, stops the ascent
  once FA on D_f <= target (as ``gradient_ascent`` does). Both are checked before the first
  step and after each step on the whole D_f (one forward pass, counted in ``cost.extra``).
- the forward pass runs in eval mode like this package's other ascent methods (the code's
  FLNet has neither dropout nor BatchNorm, so the two agree there); parameters change, buffers
  do not.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from fedunlearn.errors import UnlearningError
from fedunlearn.metrics.accuracy import evaluate_loss_accuracy
from fedunlearn.types import Delta
from fedunlearn.unlearning.base import MethodTraits
from fedunlearn.unlearning.common import Workspace, check_loss, unlearning_method
from fedunlearn.unlearning.steps import AscentSettings

#: SGD momentum of the ascent (official code: ``SGD(lr=0.01, momentum=0.9)``).
PGA_MOMENTUM = 0.9
#: Total gradient norm clip before each step (official code: ``clip_grad = 5``).
PGA_CLIP_NORM = 5.0
#: Freshly initialised models averaged into the radius (official code: 10).
PGA_RANDOM_MODELS = 10
#: The radius is ``sqrt(mean squared distance to random models / RADIUS_DIVISOR)``.
RADIUS_DIVISOR = 3.0


def parameter_vector(model: nn.Module) -> torch.Tensor:
    """All parameters of ``model`` as one detached float32 vector (``parameters_to_vector``)."""
    return nn.utils.parameters_to_vector([p.detach().float() for p in model.parameters()]).clone()


def ball_radius(reference: torch.Tensor, randoms: Sequence[torch.Tensor]) -> float:
    """``delta = sqrt(mean_i ||reference - random_i||_2^2 / 3)``, as the official code computes it.

    >>> ball_radius(torch.zeros(2), [torch.tensor([3.0, 0.0]), torch.tensor([0.0, 3.0])])
    1.7320508075688772
    """
    if not randoms:
        raise ValueError("ball_radius needs at least one random model")
    squared = [float(torch.sum((reference - r) ** 2)) for r in randoms]
    return math.sqrt(sum(squared) / len(squared) / RADIUS_DIVISOR)


def project_to_ball(model: nn.Module, center: torch.Tensor, radius: float) -> bool:
    """Project ``model``'s parameters in place onto ``{w : ||w - center||_2 <= radius}``.

    Points inside are left untouched; a point outside moves along the ray to ``center`` onto
    the sphere (the code's ``w_ref + (w - w_ref) / ||w - w_ref|| * delta``). Returns whether
    it projected.
    """
    params = list(model.parameters())
    current = nn.utils.parameters_to_vector([p.detach() for p in params])
    offset = current - center.to(current.device, current.dtype)
    distance = float(torch.linalg.vector_norm(offset))
    if distance <= radius:
        return False
    with torch.no_grad():
        nn.utils.vector_to_parameters(center.to(current.device, current.dtype) + offset * (radius / distance), params)
    return True


def stop_loss(num_classes: int) -> float:
    """Return ``ln(C)``, the CE of a uniform guess: the ascent stops once D_f's mean CE reaches it."""
    return math.log(max(num_classes, 2))


def _random_vectors(ws: Workspace, count: int) -> list[torch.Tensor]:
    factory = ws.context.model_factory
    if factory is None:
        raise UnlearningError(
            "pga needs UnlearnContext.model_factory (a builder of freshly initialised models of the same "
            "architecture) for its ball radius; pass it in the UnlearnContext"
        )
    vectors = [parameter_vector(factory()) for _ in range(count)]
    expected = sum(p.numel() for p in ws.model.parameters())
    if any(v.numel() != expected for v in vectors):
        raise UnlearningError(
            f"pga: model_factory() builds a model with {vectors[0].numel()} parameters, the "
            f"model has {expected}; pass the factory of the same architecture"
        )
    return vectors


def _should_stop(ws: Workspace, limit: float) -> tuple[bool, float, float]:
    """One pass over D_f: stop when mean CE >= ``limit`` or FA <= ``settings.target_fa``."""
    result = evaluate_loss_accuracy(
        ws.model, ws.split.forget, batch_size=max(ws.settings.batch_size, 256), device=ws.device
    )
    target = ws.settings.target_fa
    return result.loss >= limit or (target is not None and result.accuracy <= target), result.loss, result.accuracy


def _ascent_step(
    ws: Workspace, optimizer: torch.optim.Optimizer, inputs: torch.Tensor, labels: torch.Tensor, step: int
) -> float:
    optimizer.zero_grad(set_to_none=True)
    loss = nn.functional.cross_entropy(ws.model(inputs), labels)
    value = check_loss(loss, what="pga ascent step", step=step)
    torch.autograd.backward(-loss)
    nn.utils.clip_grad_norm_(ws.model.parameters(), max_norm=PGA_CLIP_NORM)
    optimizer.step()
    return value


@unlearning_method("pga", settings=AscentSettings, traits=MethodTraits(fast="once", strengthen="repeat"))
def pga(ws: Workspace) -> Delta:
    """Projected gradient ascent on D_f around the given model (see the module docstring).

    Reads ``lr``, ``epochs``, ``max_steps``, ``batch_size``, ``target_fa``,
    ``context.model_factory`` (required) and ``context.seed``. ``info`` reports the radius,
    the steps, the last CE/FA on D_f and why it stopped; ``cost.extra`` the projections and
    the evaluation passes.
    """
    config = ws.settings
    center = parameter_vector(ws.model).to(ws.device)
    radius = ball_radius(center.cpu(), _random_vectors(ws, PGA_RANDOM_MODELS))
    limit = stop_loss(ws.split.forget.num_classes)
    optimizer = torch.optim.SGD(ws.model.parameters(), lr=config.lr, momentum=PGA_MOMENTUM)
    budget = config.max_steps if config.max_steps is not None else math.inf
    shuffle = ws.generator("shuffle")
    ws.model.eval()
    stop, ce, fa = _should_stop(ws, limit)
    steps, projections, checks, epochs = 0, 0, 1, 0
    while not stop and epochs < config.epochs and steps < budget:
        epochs += 1
        for batch in ws.split.forget.batches(config.batch_size, shuffle=True, generator=shuffle, device=ws.device):
            _ascent_step(ws, optimizer, batch.inputs, batch.labels, steps)
            projections += project_to_ball(ws.model, center, radius)
            steps += 1
            stop, ce, fa = _should_stop(ws, limit)
            checks += 1
            if stop or steps >= budget:
                break
    ws.cost.forward_backward += steps
    ws.cost.extra.update(
        steps=steps, epochs=epochs, projections=projections, loss_checks=checks, random_models=PGA_RANDOM_MODELS
    )
    reason = "loss" if ce >= limit else "target_fa" if stop else "budget"
    ws.info.update(
        radius=radius,
        stop_loss=limit,
        forget_loss=ce,
        fa=fa,
        steps=steps,
        stopped_by=reason,
        distance=float(torch.linalg.vector_norm(parameter_vector(ws.model).to(ws.device) - center)),
    )
    return ws.change()
