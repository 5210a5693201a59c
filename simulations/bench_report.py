"""Benchmark outputs: ``results.json``, ``report.md`` and plots, rebuilt from the finished cells.

Per cell the seeds are pooled: each label's forget metric, its gap to RT and its gain over
``none`` as mean ± std, TA and Avg.D, the cost, and a verdict (``simulations.judge.verdict``):
"forgets" when the mean gain exceeds twice its std and the gap to RT is at most 1.5 points,
"partly" when the gain is real but the gap larger, else "no better than doing nothing". A
cell where ``none`` is within 1 point of RT on every forget metric is marked not
discriminating and no verdict is drawn from it. Fractions are kept in [0, 1] in the JSON;
tables show percent; gaps and gains are in points.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fedunlearn.atomic import write_bytes_atomic, write_json_atomic
from simulations.bench_profiles import Profile
from simulations.judge import VERDICT_MAX_GAP, verdict

Row = dict[str, Any]
#: Per-seed numbers pooled into mean and std.
POOLED = (
    "forget_value",
    "forget_gap_rt",
    "forget_gain_vs_none",
    "FA",
    "RA",
    "TA",
    "MIA",
    "ASR",
    "avg_gap_rt",
    "cost_seconds",
    "cost_messages",
    "cost_bytes",
    "cost_round_trips",
)


#: The cost fields a phase and RT both report, as (field, column title).
COST_FIELDS = (
    ("cost_client_examples", "examples"),
    ("cost_client_steps", "SGD steps"),
    ("cost_bytes", "bytes"),
    ("cost_messages", "messages"),
    ("cost_round_trips", "round trips"),
    ("cost_seconds", "wall time"),
)


def cost_ratios(row: Row, rt: Row) -> Row:
    """``row``'s cost as fractions of RT's: at the run's length, and (wall time, examples) at
    the length RT needs to regain the pre-deletion test accuracy."""
    out: Row = {}
    for key, _ in COST_FIELDS:
        out[f"ratio_{key}"] = _ratio(row.get(key), rt.get(key))
    to_target = rt.get("to_target") or {}
    for key in ("cost_seconds", "cost_client_examples"):
        out[f"ratio_to_target_{key}"] = _ratio(row.get(key), to_target.get(key))
    return out


def _ratio(value: Any, reference: Any) -> float | None:
    if not isinstance(value, (int, float)) or not isinstance(reference, (int, float)) or reference <= 0:
        return None
    return float(value) / float(reference)


RATIOS = (
    *(f"ratio_{k}" for k, _ in COST_FIELDS),
    "ratio_to_target_cost_seconds",
    "ratio_to_target_cost_client_examples",
)


def method_of(label: str) -> str:
    """``finetune@partial_amnesiac`` -> ``finetune``."""
    return label.split("@", 1)[0]


def run_rows(cells: Sequence[Row]) -> list[Row]:
    """One row per cell, seed and label (RT included), as the cells stored them."""
    rows = []
    for cell in cells:
        for label, row in cell["rows"].items():
            rows.append(
                {
                    "cell": cell["cell"],
                    "seed": cell["seed"],
                    "role": cell["role"],
                    "label": label,
                    "matched_to": label.split("@", 1)[1] if "@" in label else None,
                    **{k: v for k, v in row.items() if k != "requests"},
                    "method": method_of(label),
                }
            )
    return rows


def _stats(values: Sequence[Any]) -> tuple[float | None, float | None]:
    finite = [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(float(v))]
    if not finite:
        return None, None
    return float(np.mean(finite)), float(np.std(finite, ddof=1)) if len(finite) > 1 else 0.0


def pooled_cells(cells: Sequence[Row]) -> list[Row]:
    """Per cell: the seeds, whether it discriminates, and per label mean ± std and a verdict."""
    out = []
    for name in dict.fromkeys(c["cell"] for c in cells):
        mine = [c for c in cells if c["cell"] == name]
        discriminating = sum(c["discriminating"] for c in mine) > len(mine) / 2
        rows = []
        for label in dict.fromkeys(label for c in mine for label in c["rows"]):
            per_seed = [c["rows"][label] for c in mine if label in c["rows"]]
            row: Row = {"label": label, "method": method_of(label), "seeds": len(per_seed)}
            for key in POOLED:
                row[key], row[f"{key}_std"] = _stats([r.get(key) for r in per_seed])
            ratios = [cost_ratios(c["rows"][label], c["rows"]["RT"]) for c in mine if label in c["rows"]]
            for key in RATIOS:
                row[key], row[f"{key}_std"] = _stats([r[key] for r in ratios])
            row["forget_metric"] = mine[0]["forget_metric"]
            row["discriminating"] = discriminating
            row["phase"] = _phase_summary(per_seed)
            gains = [r["forget_gain_vs_none"] for r in per_seed if r.get("forget_gain_vs_none") is not None]
            gaps = [r["forget_gap_rt"] for r in per_seed]
            row["verdict"] = _verdict(label, row["forget_metric"], gains, gaps, discriminating)
            rows.append(row)
        out.append(
            {
                "cell": name,
                "role": mine[0]["role"],
                "description": mine[0]["description"],
                "schedule": mine[0]["schedule"],
                "seeds": [c["seed"] for c in mine],
                "forget_metric": mine[0]["forget_metric"],
                "discriminating": discriminating,
                "num_forget": mine[0]["num_forget"],
                "rows": rows,
            }
        )
    return out


def _phase_summary(per_seed: Sequence[Row]) -> str:
    """How the label's phases ended over the seeds, e.g. "served 2, not_verified 1"."""
    statuses: list[str] = []
    for row in per_seed:
        if "statuses" not in row:
            continue
        traces = row.get("no_trace") or [False] * len(row["statuses"])
        statuses += ["no trace" if s == "served" and t else s for s, t in zip(row["statuses"], traces, strict=False)]
    counts = {s: statuses.count(s) for s in dict.fromkeys(statuses)}
    return ", ".join(f"{s} {n}" for s, n in counts.items()) or "–"


def _verdict(label: str, metric: str, gains: Sequence[float], gaps: Sequence[float], discriminating: bool) -> str:
    if label in ("RT", "none"):
        return "reference"
    if not discriminating:
        return "cell not discriminating"
    found = verdict(gains, gaps, max_gap=VERDICT_MAX_GAP[metric])
    return found if len(gains) >= 3 else f"{found} (indicative: {len(gains)} seed)"


def _pm(mean: Any, std: Any, *, scale: float = 100.0, digits: int = 1) -> str:
    """``mean ± std`` (the std only when several seeds gave one)."""
    if mean is None:
        return "–"
    text = f"{scale * mean:.{digits}f}"
    return text if not std else f"{text} ± {scale * std:.{digits}f}"


def cell_lines(cell: Row) -> list[str]:
    """The markdown table of one pooled cell."""
    metric = cell["forget_metric"]
    flag = "" if cell["discriminating"] else " — **not discriminating** (none within 1 point of RT): no claim"
    lines = [
        f"## {cell['cell']} ({cell['role']}){flag}",
        "",
        f"{cell['description']}; schedule `{cell['schedule']}`; {cell['num_forget']} deleted records; "
        f"seeds {cell['seeds']}. Forget metric: **{metric}** (%).",
        "",
        f"| label | {metric} | gap to RT | gain vs none | TA | MIA | Avg.D | phase s | phases | verdict |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in cell["rows"]:
        lines.append(
            f"| {r['label']} | {_pm(r['forget_value'], r['forget_value_std'])} "
            f"| {_pm(r['forget_gap_rt'], r['forget_gap_rt_std'], scale=1, digits=2)} "
            f"| {_pm(r['forget_gain_vs_none'], r['forget_gain_vs_none_std'], scale=1, digits=2)} "
            f"| {_pm(r['TA'], r['TA_std'])} | {_pm(r['MIA'], r['MIA_std'], scale=1, digits=3)} "
            f"| {_pm(r['avg_gap_rt'], r['avg_gap_rt_std'], scale=1, digits=2)} "
            f"| {_pm(r['cost_seconds'], None, scale=1)} | {r['phase']} | {r['verdict']} |"
        )
    return [*lines, ""]


def cost_lines(cell: Row) -> list[str]:
    """One cell's phase costs as percentages of RT's, next to the forget-metric gap."""
    titles = " | ".join(title for _, title in COST_FIELDS)
    lines = [
        f"### {cell['cell']}: cost as % of RT (mean over seeds)",
        "",
        f"| label | {cell['forget_metric']} gap to RT | {titles} | wall time vs RT to target |",
        "|---" * (len(COST_FIELDS) + 3) + "|",
    ]
    for r in cell["rows"]:
        if r["label"] in ("RT", "none"):
            continue
        cells = " | ".join(_percent(r.get(f"ratio_{key}")) for key, _ in COST_FIELDS)
        lines.append(
            f"| {r['label']} | {_pm(r['forget_gap_rt'], r['forget_gap_rt_std'], scale=1, digits=2)} | {cells} "
            f"| {_percent(r.get('ratio_to_target_cost_seconds'))} |"
        )
    return [*lines, ""]


def _percent(value: Any) -> str:
    if value is None:
        return "–"
    percent = 100.0 * float(value)
    return f"{percent:.3g}%" if percent < 10 else f"{percent:.0f}%"


def verdict_lines(pooled: Sequence[Row], profile: Profile) -> list[str]:
    """Methods x cells: the verdicts at a glance."""
    cells = [c for c in pooled if c["role"] == "primary"]
    header = "| method | " + " | ".join(c["cell"] for c in cells) + " |"
    lines = [
        "## Verdicts (primary cells, deletion served after the last round)",
        "",
        header,
        "|---" * (len(cells) + 1) + "|",
    ]
    for method in (*profile.methods, *(f"finetune@{m}" for m in profile.methods)):
        found = [next((r["verdict"] for r in c["rows"] if r["label"] == method), "–") for c in cells]
        lines.append(f"| {method} | " + " | ".join(found) + " |")
    return [*lines, ""]


def report_markdown(profile: Profile, pooled: Sequence[Row], missing: Sequence[Row], *, env: Row, wall: float) -> str:
    """The whole report.md."""
    load = ", ".join(f"{x:.1f}" for x in env["load_average"])
    lines = [
        f"# fedunlearn benchmark — profile `{profile.name}`",
        "",
        f"{len(pooled)} cell(s) with results; {len(missing)} cell-seed(s) missing. This invocation took "
        f"{wall:.0f} s on {env['cpu_count']} CPU(s) (load average {load}); "
        f"python {env['python']}, torch {env['torch']}, flwr {env['flwr']}, commit {env['git_commit'][:10]}"
        f"{' (dirty)' if env['git_dirty'] else ''}.",
        "",
        "Every method is compared with `none` (the model as it is when the request is served), `finetune` "
        "(fine-tuning on retained data with the step budget the method's phase used) and RT (retrained "
        "without the deleted records), on the same seeds and partitions. Gap: |value - RT| in points; gain "
        "vs none: none's gap minus the method's. Verdict: forgets = mean gain > 2 std and gap <= 1.5 points "
        "(6 for the MIA score, an AUC whose standard error is about 3 points). Costs: the phase's client "
        "examples, SGD steps, bytes up and down, messages, sequential round trips and wall time, as % of RT's "
        "whole run, and its wall time as % of RT's run up to the round it regains the pre-deletion test accuracy. "
        "Phases: how the method's phase ended (served; no trace: the criterion held before any step, the model "
        "was committed unchanged; not_verified: the criterion still failed when the budget was spent, so the "
        "model was rolled back and the request stays open; deferred: the phase could not run).",
        "",
        *verdict_lines(pooled, profile),
    ]
    for cell in pooled:
        lines += cell_lines(cell)
        lines += cost_lines(cell)
    if missing:
        lines += ["## Not run", "", *(f"- {m['cell_id']}: {m['status']} — {m['reason']}" for m in missing), ""]
    return "\n".join(lines)


def write_outputs(
    profile: Profile, cells: Sequence[Row], missing: Sequence[Row], out: Path, *, env: Row, wall_seconds: float
) -> list[Path]:
    """Write results.json, report.md and the plots; return their paths."""
    from simulations.bench_plots import write_plots

    pooled = pooled_cells(cells)
    results = {
        "profile": profile.name,
        "settings": dict(profile.settings),
        "method_settings": {k: dict(v) for k, v in profile.method_settings.items()},
        "seeds": list(profile.seeds),
        "env": env,
        "wall_seconds": wall_seconds,
        "cells": pooled,
        "runs": run_rows(cells),
        "missing": list(missing),
    }
    written = [write_json_atomic(out / "results.json", results)]
    text = report_markdown(profile, pooled, missing, env=env, wall=wall_seconds)
    written.append(write_bytes_atomic(out / "report.md", text.encode("utf-8")))
    return written + write_plots(pooled, out)
