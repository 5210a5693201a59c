"""Message types and record keys of the fedunlearn protocol: the only place they are spelled.

Pure constants (no Flower import), so the core, the ClientApp and the ServerApp agree by
construction. Message types follow Flower's ``<category>.<action>`` routing.
"""

from __future__ import annotations

from typing import Final

# ------------------------------------------------------------------------- message types
#: FedAvg round: train locally from the global weights while recording the history.
TRAIN: Final = "train"
#: Local evaluation of the global weights on the client's retained training data.
EVALUATE: Final = "evaluate"
#: Start-of-run handshake and between-round poll: partition id, pending deletions.
QUERY_STATUS: Final = "query.status"
#: Remaining clients: diagonal empirical Fisher of the CE loss on their retained data.
QUERY_FISHER: Final = "query.fisher"
#: Forgetting client: its fast forgetting correction (amnesiac / label-flip / ascent / SFR).
TRAIN_FORGET: Final = "train.forget"
#: Any client with retained data: slow remain-preserving descent steps from given weights.
TRAIN_REMAIN: Final = "train.remain"
#: Verification of an unlearning phase: FA / MIA on the forgetting client, RA elsewhere.
EVALUATE_VERIFY: Final = "evaluate.verify"
#: End of a phase: the forgetting client marks the request served (or failed), purges the
#: history entries it spent, and stores the receipt.
QUERY_COMMIT: Final = "query.commit"

# ----------------------------------------------------------------------------- record keys
ARRAYS: Final = "arrays"  # ArrayRecord: model weights or a correction
CONFIG: Final = "config"  # ConfigRecord: instructions from the server
METRICS: Final = "metrics"  # MetricRecord: numbers for aggregation/logging
STATUS: Final = "status"  # ConfigRecord in replies: client-side state worth announcing
ROUND_WEIGHTS: Final = "round-weights"  # ConfigRecord server->client: FedAvg weights per round
RECEIPT: Final = "receipt"  # ConfigRecord: a deletion receipt (JSON text)

# ------------------------------------------------------------------ keys inside the records
SERVER_ROUND: Final = "server-round"
LINEAGE: Final = "lineage"  # in every server message: the model lineage whose history the client keeps
TRAINED_ROUNDS: Final = "trained-rounds"  # train.forget: rounds whose update of this client is in the model
NUM_EXAMPLES: Final = "num-examples"  # FedAvg weighting key (Flower's default name)
TRAIN_LOSS: Final = "train-loss"
TRAIN_STEPS: Final = "train-steps"  # SGD steps of a local training round
EVAL_LOSS: Final = "eval-loss"
EVAL_ACCURACY: Final = "eval-acc"
PENDING_DELETIONS: Final = "pending-deletions"  # always present, so metric keys never differ
HISTORY_BYTES: Final = "history-bytes"
HISTORY_DENSE_BYTES: Final = "history-dense-bytes"
HISTORY_ROUND_BYTES: Final = "history-round-bytes"
FEDERATION: Final = "federation"  # ConfigRecord server->client: the run config (kebab-case)
PARTITION_ID: Final = "partition-id"
NUM_PARTITIONS: Final = "num-partitions"
ROUNDS: Final = "rounds"
WEIGHTS: Final = "weights"
SEED: Final = "seed"
REQUEST_ID: Final = "request-id"
REQUEST_IDS: Final = "request-ids"
REQUEST_KIND: Final = "request-kind"
PHASE: Final = "phase"
STEP: Final = "step"
OUTCOME: Final = "outcome"  # in query.commit: OUTCOME_SERVED (default) or OUTCOME_FAILED (+ REASON)
OUTCOME_SERVED: Final = "served"
OUTCOME_FAILED: Final = "failed"
REASON: Final = "reason"
ATTEMPTS: Final = "attempts"  # reply to a failed-outcome commit: failed attempts recorded so far
RECEIPT_JSON: Final = "receipt-json"
REMAIN_FISHER: Final = "remain-fisher"  # ArrayRecord: averaged F_r (server->forgetting client), F_r (slow replies)
REMAIN_FISHER_COUNT: Final = "remain-fisher-count"  # the samples the averaged F_r was computed on
WANT_FISHER: Final = "want-fisher"  # train.remain: also return F_r at the weights received (1/0)
REMAIN_LR: Final = "remain-lr"  # train.remain: the slow steps' SGD, when the method has its own
REMAIN_MOMENTUM: Final = "remain-momentum"
REMAIN_WEIGHT_DECAY: Final = "remain-weight-decay"
OUTER_STEPS: Final = "outer-steps"
REMAIN_STEPS: Final = "remain-steps"
EXCLUDE_REQUEST: Final = "exclude-request"  # the forgetting client leaves D_f out of its slow step
PASSED: Final = "passed"  # train.forget reply: the criterion holds on the weights received (1/0)
CHECK_PREFIX: Final = "check-"  # the criterion's figures, e.g. "check-FA", "check-MIA", "check-ASR"
TENTATIVE: Final = "tentative"  # query.commit: 1 = a check that commits if it can (a failure is not recorded)
VERIFIED: Final = "verified"  # query.commit reply: 1 committed (receipt attached), 0 refused by the criterion
EXAMPLES: Final = "examples"  # samples processed forward and backward
CLASS_LEVEL: Final = "class-level"  # train.forget reply: 1 when the request forgets a whole class
FORWARD_BACKWARD: Final = "forward-backward"
HISTORY_STEPS: Final = "history-steps"
SECONDS: Final = "seconds"
PURGED_STEPS: Final = "purged-steps"
FA: Final = "FA"
RA: Final = "RA"
MIA: Final = "MIA"
NUM_FORGET: Final = "num-forget"
NUM_RETAINED: Final = "num-retained"
