"""A served sample-level receipt for tests that need one and do not care about its metrics."""

from __future__ import annotations

from typing import Any

from fedunlearn.deletion import DeletionReceipt


def sample_receipt(request_id: str, ids: list[int], **fields: Any) -> DeletionReceipt:
    """A receipt for forgetting ``ids``; ``fields`` override the placeholder digests, round, metrics.

    ``ids_hmac`` stays empty: ``DeletionQueue.begin_commit`` (and ``mark_served``) set it
    under the node's key, as they do for a real receipt.
    """
    values: dict[str, Any] = {
        "ids_hmac": "",
        "model_digest_before": "a" * 64,
        "model_digest_after": "b" * 64,
        "server_round": 3,
        "method": "partial_amnesiac",
        "metrics": {"FA": 0.1},
        "served_at": 100.0,
    }
    values.update(fields)
    return DeletionReceipt(request_id=request_id, kind="sample", num_samples=len(ids), **values)
