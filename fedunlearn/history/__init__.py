"""Client-side update history: layer-wise pruning, the on-disk store and the step recorder.

``HistoryStore`` keeps, per round and local step, the pruned update of each layer and the
batch's sample ids; ``RoundRecorder`` fills it while ``train_local`` runs;
``select_layerwise`` / ``mask_layerwise`` are the layer-wise partial selection that the
partial unlearning methods share.
"""

from fedunlearn.history.layout import LayerSpec, ParamLayout
from fedunlearn.history.pruning import (
    SparseDelta,
    SparseLayer,
    available_selectors,
    layer_keep_count,
    mask_layerwise,
    register_selector,
    select_layerwise,
)
from fedunlearn.history.recorder import RoundRecorder
from fedunlearn.history.results import HistorySum, RoundUsage, StepRef, StorageUsage
from fedunlearn.history.roundfile import FILE_OVERHEAD_BYTES, STEP_OVERHEAD_BYTES
from fedunlearn.history.store import HistoryStore

__all__ = [
    "FILE_OVERHEAD_BYTES",
    "STEP_OVERHEAD_BYTES",
    "HistoryStore",
    "HistorySum",
    "LayerSpec",
    "ParamLayout",
    "RoundRecorder",
    "RoundUsage",
    "SparseDelta",
    "SparseLayer",
    "StepRef",
    "StorageUsage",
    "available_selectors",
    "layer_keep_count",
    "mask_layerwise",
    "register_selector",
    "select_layerwise",
]
