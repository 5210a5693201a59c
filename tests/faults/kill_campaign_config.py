"""The kill test's client configuration (shared by the campaign and the forkserver warm-up)."""

CLIENT_CONFIG = {
    "dataset": "digits",
    "model": "mlp",
    "num-clients": 1,
    "samples-per-client": 240,
    "test-samples": 100,
    "batch-size": 24,
    "lr": 0.05,
    "keep-ratio": 0.1,
    "client-threads": 1,
    "unlearn-method": "partial_amnesiac",
    "num-server-rounds": 1,
}
