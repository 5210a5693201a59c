"""Benchmark the update history: bytes per client per round and training-time overhead.

One client's IID share of MNIST (1/5 of the training set by default) trains LeNet for one
round, with and without recording, for several keep ratios and value dtypes. Runs are
interleaved (plain, recorded, plain, recorded, ...) and the median of the repeats is
reported. Torch uses one thread, as each simulated client gets one core.

Several views of the overhead, because a shared machine makes whole-run differences noisy:
``wall ovh`` (recorded vs plain wall-clock, what a client waits, fsync included), ``cpu ovh``
(the same in process CPU time), ``rec ovh`` (wall time inside the recorder's hooks plus the
commit at the end of the round, over the plain run's wall time) and ``rec cpu ovh`` (CPU
time inside the hooks over the plain run's CPU time; the least disturbed by other jobs).

    python -m simulations.bench_history --out results/bench
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fedunlearn.config import DataConfig, HistoryConfig, TrainConfig
from fedunlearn.data import IndexedDataset, build_federated_data
from fedunlearn.history import HistoryStore, RoundRecorder
from fedunlearn.models import build_model, count_parameters
from fedunlearn.training import train_local


@dataclass(frozen=True)
class Setting:
    """One recording configuration to measure."""

    keep_ratio: float
    value_dtype: str


@dataclass(frozen=True)
class Timing:
    """One training run: wall and CPU seconds, and (recorded runs) seconds in the recorder."""

    wall_s: float
    cpu_s: float
    hooks_s: float = 0.0
    hooks_cpu_s: float = 0.0
    commit_s: float = 0.0


@dataclass(frozen=True)
class Row:
    """Measurements of one setting (seconds are medians over the repeats)."""

    keep_ratio: float
    value_dtype: str
    steps: int
    history_bytes: int
    disk_bytes_with_manifest: int
    dense_bytes: int
    ratio: float
    train_s_plain: float
    train_s_recorded: float
    overhead_pct: float
    cpu_overhead_pct: float
    recorder_ms_per_step: float
    commit_s: float
    recorder_overhead_pct: float
    recorder_cpu_overhead_pct: float
    plain_runs: list[Timing]
    recorded_runs: list[Timing]


class _TimedObserver:
    """Forwards to a RoundRecorder and adds up the wall and CPU time spent in its hooks."""

    def __init__(self, recorder: RoundRecorder) -> None:
        self.recorder, self.seconds, self.cpu_seconds = recorder, 0.0, 0.0

    def before_step(self, model: nn.Module) -> None:
        start, cpu = time.perf_counter(), time.thread_time()
        self.recorder.before_step(model)
        self.seconds += time.perf_counter() - start
        self.cpu_seconds += time.thread_time() - cpu

    def after_step(self, model: nn.Module, sample_ids: torch.Tensor) -> None:
        start, cpu = time.perf_counter(), time.thread_time()
        self.recorder.after_step(model, sample_ids)
        self.seconds += time.perf_counter() - start
        self.cpu_seconds += time.thread_time() - cpu


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Show defaults and keep the description's line breaks."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=_HelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("results/bench_history"), help="output directory")
    parser.add_argument("--dataset", default="mnist", help="dataset name (files under $FEDUNLEARN_DATA)")
    parser.add_argument("--model", default="lenet", help="registered model name")
    parser.add_argument("--num-clients", type=int, default=5, help="IID clients; client 0's share is trained")
    parser.add_argument("--batch-size", type=int, default=64, help="local batch size")
    parser.add_argument("--lr", type=float, default=0.05, help="SGD learning rate")
    parser.add_argument("--epochs", type=int, default=1, help="local epochs of the one round")
    parser.add_argument("--repeats", type=int, default=3, help="runs per setting (median reported)")
    parser.add_argument("--ratios", default="1.0,0.1,0.01", help="keep ratios recorded as float32")
    parser.add_argument("--fp16-ratios", default="0.1,0.01", help="keep ratios also recorded as float16")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (one core per client)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the partition, the model and the shuffling")
    return parser.parse_args(argv)


def _settings(args: argparse.Namespace) -> list[Setting]:
    settings = [Setting(float(r), "float32") for r in args.ratios.split(",") if r]
    return settings + [Setting(float(r), "float16") for r in args.fp16_ratios.split(",") if r]


def _fresh_model(args: argparse.Namespace, data: IndexedDataset) -> nn.Module:
    torch.manual_seed(args.seed)
    return build_model(args.model, input_shape=data.input_shape, num_classes=data.num_classes)


def _time_plain(args: argparse.Namespace, data: IndexedDataset, train: TrainConfig) -> Timing:
    model = _fresh_model(args, data)
    wall, cpu = time.perf_counter(), time.process_time()
    train_local(model, data, config=train, seed=args.seed)
    return Timing(time.perf_counter() - wall, time.process_time() - cpu)


def _time_recorded(
    args: argparse.Namespace, data: IndexedDataset, train: TrainConfig, history: HistoryConfig, directory: Path
) -> tuple[Timing, HistoryStore]:
    """Time one recorded round, its commit (index, fsync, manifest) included."""
    model = _fresh_model(args, data)
    store = HistoryStore.for_model(directory, model=model, config=history)
    wall, cpu = time.perf_counter(), time.process_time()
    with store.record_round(1) as recorder:
        timed = _TimedObserver(recorder)
        train_local(model, data, config=train, seed=args.seed, observer=timed)
        trained = time.perf_counter()
    end = time.perf_counter()
    return Timing(end - wall, time.process_time() - cpu, timed.seconds, timed.cpu_seconds, end - trained), store


def bench_setting(args: argparse.Namespace, data: IndexedDataset, train: TrainConfig, setting: Setting) -> Row:
    history = HistoryConfig(keep_ratio=setting.keep_ratio, value_dtype=setting.value_dtype)  # type: ignore[arg-type]
    plain, recorded = [], []
    with tempfile.TemporaryDirectory(prefix="bench_history_") as tmp:
        for repeat in range(args.repeats):
            plain.append(_time_plain(args, data, train))
            timing, store = _time_recorded(args, data, train, history, Path(tmp) / f"run{repeat}")
            recorded.append(timing)
        usage = store.usage()
    row = usage.rounds[0]

    def median(runs: list[Timing], key: str) -> float:
        return float(statistics.median(getattr(t, key) for t in runs))

    wall_p, wall_r = median(plain, "wall_s"), median(recorded, "wall_s")
    cpu_p, cpu_r = median(plain, "cpu_s"), median(recorded, "cpu_s")
    hooks, hooks_cpu = median(recorded, "hooks_s"), median(recorded, "hooks_cpu_s")
    commit = median(recorded, "commit_s")
    return Row(
        setting.keep_ratio,
        setting.value_dtype,
        row.steps,
        row.bytes,
        usage.disk_bytes,
        row.dense_bytes,
        row.ratio,
        wall_p,
        wall_r,
        100.0 * (wall_r - wall_p) / wall_p,
        100.0 * (cpu_r - cpu_p) / cpu_p,
        1e3 * hooks / max(row.steps, 1),
        commit,
        100.0 * (hooks + commit) / wall_p,
        100.0 * hooks_cpu / cpu_p,
        plain,
        recorded,
    )


def format_table(rows: list[Row]) -> str:
    header = (
        f"{'rho':>5} {'dtype':>7} {'steps':>5} {'history MB':>10} {'dense MB':>9} {'ratio':>6} {'plain s':>8} "
        f"{'recorded s':>10} {'wall ovh':>8} {'cpu ovh':>8} {'hook ms/step':>12} {'commit s':>8} {'rec ovh':>8} "
        f"{'rec cpu ovh':>11}"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r.keep_ratio:>5g} {r.value_dtype:>7} {r.steps:>5} {r.history_bytes / 1e6:>10.3f} "
            f"{r.dense_bytes / 1e6:>9.3f} {r.ratio:>6.3f} {r.train_s_plain:>8.2f} {r.train_s_recorded:>10.2f} "
            f"{r.overhead_pct:>7.1f}% {r.cpu_overhead_pct:>7.1f}% {r.recorder_ms_per_step:>12.3f} "
            f"{r.commit_s:>8.3f} {r.recorder_overhead_pct:>7.1f}% {r.recorder_cpu_overhead_pct:>10.1f}%"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    fed = build_federated_data(DataConfig(dataset=args.dataset, num_clients=args.num_clients), seed=args.seed)
    data = fed.client_train(0)
    train = TrainConfig(
        model=args.model, local_epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, device="cpu"
    )
    parameters = count_parameters(_fresh_model(args, data))
    print(
        f"{args.model} ({parameters} parameters) on {len(data)} {args.dataset} samples, batch {args.batch_size}, "
        f"{args.epochs} epoch(s), SGD lr {args.lr}; torch.set_num_threads({args.threads}); "
        f"median of {args.repeats} interleaved runs"
    )
    load_before = os.getloadavg()
    rows = []
    for setting in _settings(args):
        rows.append(bench_setting(args, data, train, setting))
        print(format_table(rows[-1:]).splitlines()[-1], flush=True)
    table = format_table(rows)
    load = {"before": load_before, "after": os.getloadavg(), "cpus": os.cpu_count()}
    print(f"\n{table}\nload average (1/5/15 min) before {load_before}, after {load['after']} on {os.cpu_count()} CPUs")
    result = {
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "samples": len(data),
        "parameters": parameters,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "load_average": load,
        "rows": [asdict(r) for r in rows],
        "table": table,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_history.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.out / 'bench_history.json'}")
    return result


if __name__ == "__main__":
    main()
