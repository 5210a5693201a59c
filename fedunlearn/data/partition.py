"""Split a training set's sample ids over clients: IID, Dirichlet(alpha) non-IID, by class.

Every partitioner is deterministic for a seed and returns disjoint, sorted id arrays, so the
retrain baseline (RT) sees exactly the same clients minus the forgotten samples.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from fedunlearn.config import DataConfig
from fedunlearn.errors import ConfigError, UnknownNameError
from fedunlearn.types import SampleIds


@dataclass(frozen=True)
class Partition:
    """Sample ids of each client (index = partition id)."""

    client_ids: tuple[SampleIds, ...]

    @property
    def num_clients(self) -> int:
        """Number of clients."""
        return len(self.client_ids)

    def for_client(self, partition_id: int) -> SampleIds:
        """Ids of one client; raises ConfigError for an id outside ``[0, num_clients)``."""
        if not 0 <= partition_id < self.num_clients:
            raise ConfigError(f"partition_id must be in [0, {self.num_clients}), got {partition_id}")
        return self.client_ids[partition_id]

    def owner_of(self, sample_ids: SampleIds) -> np.ndarray:
        """The partition id owning each sample id (-1 where no client holds it)."""
        owners = np.full(len(sample_ids), -1, dtype=np.int64)
        for k, ids in enumerate(self.client_ids):
            owners[np.isin(sample_ids, ids)] = k
        return owners


Partitioner = Callable[[SampleIds, np.ndarray, int, DataConfig, np.random.Generator], list[np.ndarray]]
_PARTITIONERS: dict[str, Partitioner] = {}


def register_partitioner(name: str) -> Callable[[Partitioner], Partitioner]:
    """Register ``fn(ids, labels, num_clients, config, rng) -> list of id arrays``."""

    def decorator(fn: Partitioner) -> Partitioner:
        _PARTITIONERS[name] = fn
        return fn

    return decorator


def make_partition(sample_ids: SampleIds, labels: np.ndarray, config: DataConfig, *, seed: int) -> Partition:
    """Partition ``sample_ids`` (with their ``labels``) as ``config`` says, deterministically.

    ``config.samples_per_client`` then keeps a seeded random subset of each client's ids,
    and ``config.exclusive_class`` moves every kept sample of that class to
    ``config.exclusive_client``.

    >>> p = make_partition(np.arange(10), np.arange(10) % 2, DataConfig(num_clients=2), seed=0)
    >>> sorted(np.concatenate(p.client_ids).tolist()) == list(range(10))
    True
    """
    if config.partition not in _PARTITIONERS:
        raise UnknownNameError("partition", config.partition, _PARTITIONERS)
    ids = np.asarray(sample_ids, dtype=np.int64)
    labels = np.asarray(labels)
    if len(ids) < config.num_clients:
        raise ConfigError(f"cannot split {len(ids)} samples over {config.num_clients} clients; use fewer clients")
    rng = np.random.default_rng(seed)
    parts = _PARTITIONERS[config.partition](ids, labels, config.num_clients, config, rng)
    empty = [k for k, p in enumerate(parts) if len(p) == 0]
    if empty:  # a client without data can never train; fail before the run starts
        raise ConfigError(
            f"the {config.partition!r} partition of {len(ids)} samples left client(s) {empty} of "
            f"{config.num_clients} without samples; use fewer clients or another partition"
        )
    if config.samples_per_client is not None:
        parts = [
            p if len(p) <= config.samples_per_client else rng.choice(p, config.samples_per_client, replace=False)
            for p in parts
        ]
    if config.exclusive_class is not None:
        parts = _exclusive(parts, ids[labels == config.exclusive_class], config.exclusive_client)
    return Partition(tuple(np.sort(p).astype(np.int64) for p in parts))


def _exclusive(parts: list[np.ndarray], members: np.ndarray, client: int) -> list[np.ndarray]:
    """The partitioned samples that are ``members`` (of the exclusive class) on ``client`` only."""
    held = np.concatenate([p[np.isin(p, members)] for p in parts])
    moved = [p[~np.isin(p, members)] for p in parts]
    moved[client] = np.concatenate([moved[client], held])
    return moved


@register_partitioner("iid")
def _iid(ids: SampleIds, labels: np.ndarray, n: int, config: DataConfig, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffle, then cut into ``n`` nearly equal shares."""
    return list(np.array_split(rng.permutation(ids), n))


@register_partitioner("dirichlet")
def _dirichlet(
    ids: SampleIds, labels: np.ndarray, n: int, config: DataConfig, rng: np.random.Generator
) -> list[np.ndarray]:
    """Per class, client shares drawn from Dir(alpha) (Hsu et al. 2019); redraw until every
    client holds at least ``min(10, N / (2n))`` samples, so no client is empty."""
    min_size = max(1, min(10, len(ids) // (2 * n)))
    for _ in range(100):
        shares: list[list[np.ndarray]] = [[] for _ in range(n)]
        for label in np.unique(labels):
            members = rng.permutation(ids[labels == label])
            proportions = rng.dirichlet(np.full(n, config.dirichlet_alpha))
            cuts = (np.cumsum(proportions)[:-1] * len(members)).astype(int)
            for k, piece in enumerate(np.split(members, cuts)):
                shares[k].append(piece)
        parts = [np.concatenate(s) for s in shares]
        if min(len(p) for p in parts) >= min_size:
            return parts
    raise ConfigError(
        f"Dirichlet(alpha={config.dirichlet_alpha}) left a client with fewer than {min_size} samples "
        "in 100 draws; raise dirichlet_alpha or use fewer clients"
    )


@register_partitioner("by_class")
def _by_class(
    ids: SampleIds, labels: np.ndarray, n: int, config: DataConfig, rng: np.random.Generator
) -> list[np.ndarray]:
    """Pathological non-IID (McMahan et al. 2017): each client holds ``classes_per_client``
    classes; a class shared by several clients is split evenly between them."""
    classes = np.unique(labels)
    per_client = min(config.classes_per_client, len(classes))
    # Deal classes round-robin from a shuffled, repeated list so every class is used.
    deck = np.concatenate([rng.permutation(classes) for _ in range((n * per_client) // len(classes) + 1)])
    assignment = [deck[k * per_client : (k + 1) * per_client] for k in range(n)]
    holders = {int(c): [k for k in range(n) if c in assignment[k]] for c in classes}
    parts: list[list[np.ndarray]] = [[] for _ in range(n)]
    for c, ks in holders.items():
        members = rng.permutation(ids[labels == c])
        if not ks:  # more classes than slots: give the class to the smallest client
            ks = [int(np.argmin([sum(len(x) for x in p) for p in parts]))]
        for k, piece in zip(ks, np.array_split(members, len(ks)), strict=True):
            parts[k].append(piece)
    return [np.concatenate(p) if p else np.empty(0, np.int64) for p in parts]
