"""The kill test's client configuration (shared by the campaign and the forkserver warm-up):
flat dotted run-config keys, as Flower's run config holds them."""

CLIENT_CONFIG = {
    "data.dataset": "digits",
    "train.model": "mlp",
    "data.num-clients": 1,
    "data.samples-per-client": 240,
    "data.test-samples": 100,
    "train.batch-size": 24,
    "train.lr": 0.05,
    "history.keep-ratio": 0.1,
    "train.threads": 1,
    "unlearn.method": "partial_amnesiac",
    "train.rounds": 1,
}
