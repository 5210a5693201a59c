"""Baselines in the same registry: retrain (RT), fine-tune (FT) and random-label (RL).

- ``retrain``: the gold standard. A fresh model from ``context.model_factory()`` (initialised
  under torch's RNG seeded with ``context.seed``) trained from scratch on D_r with
  ``fedunlearn.training.train_local`` and ``context.train_config`` for ``settings.epochs``
  epochs. The correction is ``theta_RT - theta`` over every floating-point state entry,
  BatchNorm running statistics included, so applying it yields the retrained model.
- ``finetune``: CE descent on D_r only (plain SGD, lr ``settings.lr``, batch
  ``settings.batch_size``, ``settings.epochs`` passes capped at ``settings.max_steps``).
  In a federated phase it is the fine-tune control: the forgetting client sends no fast
  correction (traits ``fast="none"``) and the phase is only its slow steps on every
  client's retained data, with the step budget of the method it is compared with.
- ``none``: the do-nothing control: a zero correction and no slow steps, so a phase leaves
  the model exactly as it was (what not unlearning at all would give).
- ``random_label``: as in the SalUn line of work (Fan et al. 2024; the SFR-on repository's
  ``unlearn/random_label.py``): D_f with one random wrong label per sample, joined with D_r
  (true labels) into one shuffled set, and CE descent on it with the same settings as
  ``finetune``. The official code uses SGD with momentum 0.9, weight decay 5e-4 and a cosine
  schedule; we use plain SGD as for every step method here.

All three need D_r and train in train mode (BatchNorm statistics move with the data).
"""

from __future__ import annotations

from dataclasses import dataclass

from fedunlearn.config import MethodSettings
from fedunlearn.data.indexed import IndexedDataset
from fedunlearn.errors import TrainingError, UnlearningError
from fedunlearn.training import train_local
from fedunlearn.types import Delta
from fedunlearn.unlearning.base import MethodTraits
from fedunlearn.unlearning.common import Workspace, float_state, state_difference, unlearning_method
from fedunlearn.unlearning.label_flip import relabel_wrong
from fedunlearn.unlearning.remain import sgd_descent
from fedunlearn.unlearning.steps import StepSettings


@dataclass(frozen=True)
class NoneSettings(MethodSettings):
    """The do-nothing control: one outer step, no slow steps."""

    outer_steps: int = 1
    remain_steps: int = 0


def _descend(ws: Workspace, data: IndexedDataset) -> Delta:
    """``settings.epochs`` passes of plain-SGD CE descent on ``data`` (capped at ``max_steps``)."""
    config = ws.settings
    ws.cost.forward_backward += sgd_descent(
        ws.model,
        data,
        lr=config.lr,
        batch_size=config.batch_size,
        generator=ws.generator("shuffle"),
        device=ws.device,
        epochs=config.epochs,
        steps=config.max_steps,
        what=ws.name,
    )
    return ws.change()


@unlearning_method(
    "finetune",
    settings=StepSettings,
    traits=MethodTraits(needs_retain=True, fast="none", strengthen="none", control=True),
)
def finetune(ws: Workspace) -> Delta:
    """FT: fine-tune on D_r only. Reads ``epochs``, ``max_steps``, ``batch_size``, ``lr``."""
    return _descend(ws, ws.split.retain)


@unlearning_method("random_label", settings=StepSettings, traits=MethodTraits(needs_retain=True, strengthen="repeat"))
def random_label(ws: Workspace) -> Delta:
    """RL: fine-tune on D_f with random wrong labels mixed with D_r. Reads as ``finetune``."""
    flipped = relabel_wrong(ws.split.forget, generator=ws.generator("wrong-labels"))
    return _descend(ws, IndexedDataset.concat([flipped, ws.split.retain]))


@unlearning_method(
    "retrain", settings=StepSettings, traits=MethodTraits(needs_retain=True, strengthen="none", control=True)
)
def retrain(ws: Workspace) -> Delta:
    """RT: train a fresh model on D_r from scratch; the correction turns theta into theta_RT.

    Reads ``context.model_factory``, ``context.train_config`` (both required: UnlearningError
    otherwise), ``settings.epochs`` and ``context.seed``.
    """
    factory, train_config = ws.context.model_factory, ws.context.train_config
    missing = [name for name, value in (("model_factory", factory), ("train_config", train_config)) if value is None]
    if factory is None or train_config is None:
        raise UnlearningError(
            f"retrain needs UnlearnContext.{' and '.join(missing)} (a fresh model builder and the training "
            "settings of the original run); pass them in the UnlearnContext"
        )
    fresh = factory().to(ws.device)
    before = float_state(ws.original)
    after_keys = float_state(fresh)
    if {k: tuple(v.shape) for k, v in after_keys.items()} != {k: tuple(v.shape) for k, v in before.items()}:
        raise UnlearningError(
            "retrain: model_factory() builds a model whose state differs from the model's; "
            "pass the factory of the same architecture"
        )
    try:
        result = train_local(
            fresh,
            ws.split.retain,
            config=train_config,
            seed=ws.context.seed,
            epochs=ws.settings.epochs,
            device=ws.device,
        )
    except TrainingError as err:
        raise UnlearningError(f"retrain diverged: {err}") from err
    ws.cost.forward_backward += result.steps
    ws.info["train_loss"] = result.mean_loss
    return state_difference(float_state(fresh), before)


@unlearning_method("none", settings=NoneSettings, traits=MethodTraits(fast="none", strengthen="none", control=True))
def none(ws: Workspace) -> Delta:
    """The do-nothing control: a zero correction (the model stays exactly as it is)."""
    return {}
