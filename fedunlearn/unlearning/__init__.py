"""Framework-independent unlearning methods behind one contract and one registry.

``get_method(name)`` returns a ``MethodSpec``: its traits (what it reads and needs, how a
federated phase runs it), its settings type, and the computation
``spec(model, split=ForgetRetainSplit(...), settings=spec.defaults(), context=UnlearnContext(...))
-> Correction``. Registered: ``amnesiac``, ``partial_amnesiac``, ``label_flip``,
``partial_label_flip``, ``gradient_ascent``, ``partial_gradient_ascent``, ``sfr_on``,
``pga``, ``federaser`` (a server-side phase), the baselines ``retrain`` (RT), ``finetune``
(FT), ``random_label`` (RL), and the do-nothing control ``none``. The federated protocol also calls the pieces directly:
``diagonal_fisher``, ``saliency_mask``, ``SFROnSession`` / ``masked_forget_step``, and
``remain_steps``.
"""

from fedunlearn.unlearning import (  # noqa: F401 (registers)
    amnesiac,
    baselines,
    federaser,
    gradient_ascent,
    label_flip,
    pga,
    sfr_on,
)
from fedunlearn.unlearning.base import (
    Correction,
    Cost,
    ForgetRetainSplit,
    MethodSpec,
    MethodTraits,
    UnlearnContext,
    UnlearningMethod,
    available_methods,
    get_method,
    method_settings,
    register_method,
)
from fedunlearn.unlearning.label_flip import wrong_labels
from fedunlearn.unlearning.remain import remain_steps
from fedunlearn.unlearning.saliency import (
    available_saliency_rules,
    diagonal_fisher,
    saliency_mask,
    salun_topk_mask,
)
from fedunlearn.unlearning.sfr_on import (
    SFROnSession,
    adaptive_forget_loss,
    adaptive_weights,
    cosine_factor,
    masked_forget_step,
)
from fedunlearn.unlearning.steps import apply_step, gradient_step

__all__ = [
    "Correction",
    "Cost",
    "ForgetRetainSplit",
    "MethodSpec",
    "MethodTraits",
    "SFROnSession",
    "UnlearnContext",
    "UnlearningMethod",
    "adaptive_forget_loss",
    "adaptive_weights",
    "apply_step",
    "available_methods",
    "available_saliency_rules",
    "cosine_factor",
    "diagonal_fisher",
    "get_method",
    "masked_forget_step",
    "method_settings",
    "register_method",
    "remain_steps",
    "saliency_mask",
    "salun_topk_mask",
    "gradient_step",
    "wrong_labels",
]
