"""Benchmark outputs: ``results.json`` (one row per cell and method), ``report.md`` and plots.

Everything is rebuilt from the finished cells (``OUT/cells/*.json``), so a report can be
redrawn at any time: ``python -m simulations.bench --profile quick --out DIR --report-only``.
Fractions stay in [0, 1] in the data; tables show percent; Avg.D is in percentage points.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from fedunlearn.atomic import write_bytes_atomic, write_json_atomic
from simulations.bench_profiles import FEDUNLEARN_METHODS, Profile

Row = dict[str, Any]
RUN_KEYS = (
    "FA",
    "RA",
    "TA",
    "MIA",
    "mia_entropy",
    "avg_gap_rt",
    "kl_rt_forget",
    "kl_rt_test",
    "backdoor_asr",
    "unlearn_seconds",
    "retrain_seconds",
    "messages",
)
#: The issue's targets: Avg.D (points), time (fraction of RT), history (fraction of dense), FA/RA/TA gaps (points).
TARGETS = {"avg_gap": 1.5, "time_fraction": 0.01, "history_fraction": 0.05, "accuracy_gap": 2.0}


def storage_bytes(method: str, result: Row, row: Row) -> int:
    """Bytes a method must keep to serve requests: the pruned client histories (partial
    amnesiac), the dense ones (amnesiac), the server's update log (FedEraser), else none."""
    name = method.split("@", 1)[0]
    if name == "partial_amnesiac":
        return int(row["history_bytes"])
    if name == "amnesiac":
        return int(row["dense_history_bytes"])
    if name == "federaser":
        return int(result.get("server_log_bytes", 0))
    return 0


def affected_fraction(result: Row) -> float | None:
    """Share of the forgetting clients' stored steps whose batch held a forgotten sample."""
    counts = list(result.get("affected", {}).values())
    steps = sum(c["steps"] for c in counts)
    return sum(c["affected"] for c in counts) / steps if steps else None


def runs_of(cell: Row) -> list[Row]:
    """The ``results.json`` rows of one finished cell (``before`` and RT included)."""
    result, rows = cell["result"], []
    affected = affected_fraction(result)
    rt_row = next(r for r in result["rows"] if r["method"] == "RT")
    for row in result["rows"]:
        stored = storage_bytes(row["method"], result, row) if row["method"] not in ("before", "RT") else 0
        rows.append(
            {
                "cell": cell["cell_id"],
                "dataset": cell["dataset"],
                "model": cell["model"],
                "partition": cell["partition"],
                "deletion": cell["deletion"]["kind"],
                "deletion_detail": cell["deletion_detail"],
                "role": cell["role"],
                "method": row["method"],
                "seed": cell["seed"],
                **{k: row.get(k) for k in RUN_KEYS},
                "history_bytes": stored,
                "dense_history_bytes": int(row["dense_history_bytes"]),
                "time_fraction_rt": row["unlearn_seconds"] / row["retrain_seconds"] if row["retrain_seconds"] else None,
                "history_fraction": stored / row["dense_history_bytes"] if row["dense_history_bytes"] else None,
                "affected_fraction": affected,
                "avg_gap_rt_acc": _accuracy_gap(row, rt_row),
                "num_forget": result["num_forget"],
                "pruned_history_fraction": row["history_bytes"] / row["dense_history_bytes"]
                if row["dense_history_bytes"]
                else None,
                "served": row.get("served"),
                "deferred_reasons": row.get("deferred_reasons") or [],
            }
        )
    return rows


def _accuracy_gap(row: Row, rt: Row) -> float:
    """Mean |gap| to RT over FA, RA, TA only (percentage points): Avg.D without the MIA term."""
    return 100.0 * sum(abs(float(row[k]) - float(rt[k])) for k in ("FA", "RA", "TA")) / 3


def headline(rows: Sequence[Row]) -> list[Row]:
    """Per main cell: the fedunlearn method closest to RT (lowest Avg.D) and its gaps; the history
    fraction is the pruned history every client recorded (on disk, over dense float32 storage)."""
    best = []
    for cell in dict.fromkeys(r["cell"] for r in rows if r["role"] == "main"):
        mine = [r for r in rows if r["cell"] == cell]
        rt = next(r for r in mine if r["method"] == "RT")
        ours = [r for r in mine if r["method"].split("@")[0] in FEDUNLEARN_METHODS and not r["deferred_reasons"]]
        if not ours:
            continue
        top = min(ours, key=lambda r: r["avg_gap_rt"])
        gaps = {k: 100 * abs(top[k] - rt[k]) for k in ("FA", "RA", "TA")}
        cell_storage = rt["pruned_history_fraction"] or 0.0  # what every client recorded (keep ratio, dtype)
        best.append(
            {
                "cell": cell,
                "method": top["method"],
                "avg_gap_rt": top["avg_gap_rt"],
                "avg_gap_rt_acc": top["avg_gap_rt_acc"],
                "time_fraction_rt": top["time_fraction_rt"],
                "history_fraction": cell_storage,
                **{f"{k}_gap": v for k, v in gaps.items()},
                "asr": top["backdoor_asr"],
                "asr_rt": rt["backdoor_asr"],
                "asr_before": next(r["backdoor_asr"] for r in mine if r["method"] == "before"),
            }
        )
    return best


def targets_met(h: Row) -> dict[str, bool]:
    """Which of the issue's targets one headline row meets."""
    return {
        "Avg.D <= 1.5": h["avg_gap_rt"] <= TARGETS["avg_gap"],
        "time <= 1% RT": (h["time_fraction_rt"] or math.inf) <= TARGETS["time_fraction"],
        "history <= 5% dense": h["history_fraction"] <= TARGETS["history_fraction"],
        "FA/RA/TA within 2": max(h["FA_gap"], h["RA_gap"], h["TA_gap"]) <= TARGETS["accuracy_gap"],
    }


def _pct(value: Any, digits: int = 1) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.{digits}f}"


def _num(value: Any, digits: int = 2) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


#: Table columns: header, how to show a row, how "best" is scored (lower is better; None: not scored).
Column = tuple[str, Callable[[Row], str], Callable[[Row, Row], float] | None]
COLUMNS: tuple[Column, ...] = (
    ("FA %", lambda r: _pct(r["FA"]), lambda r, rt: abs(r["FA"] - rt["FA"])),
    ("RA %", lambda r: _pct(r["RA"]), lambda r, rt: abs(r["RA"] - rt["RA"])),
    ("TA %", lambda r: _pct(r["TA"]), lambda r, rt: abs(r["TA"] - rt["TA"])),
    ("MIA %", lambda r: _pct(r["MIA"]), lambda r, rt: abs(r["MIA"] - rt["MIA"])),
    (
        "ASR %",
        lambda r: _pct(r["backdoor_asr"]),
        lambda r, rt: abs(r["backdoor_asr"] - rt["backdoor_asr"]) if r["backdoor_asr"] is not None else math.nan,
    ),
    ("Avg.D", lambda r: _num(r["avg_gap_rt"]), lambda r, rt: r["avg_gap_rt"]),
    ("Avg.D w/o MIA", lambda r: _num(r["avg_gap_rt_acc"]), lambda r, rt: r["avg_gap_rt_acc"]),
    ("KL f", lambda r: _num(r["kl_rt_forget"], 3), lambda r, rt: r["kl_rt_forget"]),
    ("KL test", lambda r: _num(r["kl_rt_test"], 3), lambda r, rt: r["kl_rt_test"]),
    ("time s", lambda r: _num(r["unlearn_seconds"], 1), lambda r, rt: r["unlearn_seconds"]),
    ("time % RT", lambda r: _pct(r["time_fraction_rt"]), None),
    ("msgs", lambda r: str(r["messages"]), None),
    ("storage % dense", lambda r: _pct(r["history_fraction"], 2), None),
)


def cell_table(rows: Sequence[Row]) -> list[str]:
    """Markdown table of one cell: methods, then before and RT; best per column in bold."""
    rt = next(r for r in rows if r["method"] == "RT")
    methods = [r for r in rows if r["method"] not in ("before", "RT")]
    served = [r for r in methods if not r["deferred_reasons"]]  # a deferred method left the model as it was
    best = {}
    for header, _, score in COLUMNS:
        scores = [score(r, rt) for r in served] if score else []
        valid = [s for s in scores if s is not None and not math.isnan(s)]
        best[header] = min(valid) if valid else None
    lines = ["| method | " + " | ".join(h for h, _, _ in COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for r in [*methods, *(x for x in rows if x["method"] == "before"), rt]:
        cells = []
        for header, show, score in COLUMNS:
            text = show(r)
            value = score(r, rt) if score and r in served else None
            top = best[header]
            bold = value is not None and top is not None and not math.isnan(value) and value <= top + 1e-12
            cells.append(f"**{text}**" if bold else text)
        note = " (deferred)" if r["deferred_reasons"] else ""
        lines.append(f"| {r['method']}{note} | " + " | ".join(cells) + " |")
    return lines


def settings_lines(profile: Profile) -> list[str]:
    """The profile's shared settings and the tuned per-method values."""
    shared = {
        k: v for k, v in dataclasses.asdict(profile).items() if k not in ("method_settings", "deletions", "sweep")
    }
    lines = [
        "## Settings",
        "",
        f"Profile `{profile.name}`: " + ", ".join(f"{k}={v}" for k, v in shared.items()),
        "",
        "Per-method unlearning settings (tuned on the quick cells with seed + 1, see `--tune`; "
        "unlisted keys keep the `UnlearnConfig` defaults):",
        "",
    ]
    lines += [f"- `{m}`: " + ", ".join(f"{k}={v}" for k, v in s.items()) for m, s in profile.method_settings.items()]
    return lines + [""]


def summary_lines(rows: Sequence[Row]) -> list[str]:
    """Headline table (best fedunlearn method per main cell), targets met, and plain facts."""
    best = headline(rows)
    lines = [
        "## Headline: best fedunlearn method per cell (lowest Avg.D to RT)",
        "",
        "| cell | method | Avg.D | Avg.D w/o MIA | time / RT | history / dense | FA gap | RA gap | TA gap "
        "| ASR before → after (RT) | targets met |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for h in best:
        met = targets_met(h)
        asr = f"{_pct(h['asr_before'])} → {_pct(h['asr'])} ({_pct(h['asr_rt'])})" if h["asr"] is not None else "–"
        lines.append(
            f"| {h['cell']} | {h['method']} | {h['avg_gap_rt']:.2f} | {h['avg_gap_rt_acc']:.2f} "
            f"| {_pct(h['time_fraction_rt'], 2)}% "
            f"| {_pct(h['history_fraction'], 2)}% | {h['FA_gap']:.1f} | {h['RA_gap']:.1f} | {h['TA_gap']:.1f} "
            f"| {asr} | {sum(met.values())}/4 |"
        )
    lines += ["", "Targets (per cell, best fedunlearn method):", ""]
    for target in ("Avg.D <= 1.5", "time <= 1% RT", "history <= 5% dense", "FA/RA/TA within 2"):
        hits = [h["cell"] for h in best if targets_met(h)[target]]
        lines.append(
            f"- {target}: met in {len(hits)} of {len(best)} cells"
            + (f" ({', '.join(hits)})" if hits and len(hits) < len(best) else "")
        )
    methods = [r for r in rows if r["method"] not in ("before", "RT") and r["role"] == "main"]
    if methods:
        fastest = min(r["time_fraction_rt"] or math.inf for r in methods)
        lines += [
            "",
            f"Fastest phase of any method: {_pct(fastest, 2)}% of RT's wall time. A phase is at least a few "
            "Flower round trips (forget, slow step, verify, commit) with per-message client start-up, while RT "
            "is only as long as the profile's few training rounds: the time target depends on how long the "
            "federation trained, not only on the method.",
        ]
        lines += ["", *mia_lines(rows)]
    return lines + [""]


def mia_lines(rows: Sequence[Row]) -> list[str]:
    """How much MIA-efficacy moves within each main cell, next to RT's train-test gap."""
    lines = [
        "MIA-efficacy per cell (RT's value; range over the served methods; RT's RA − TA, the overfitting the "
        "attack can exploit):",
        "",
    ]
    for cell in dict.fromkeys(r["cell"] for r in rows if r["role"] == "main"):
        mine = [r for r in rows if r["cell"] == cell]
        rt = next(r for r in mine if r["method"] == "RT")
        served = [r["MIA"] for r in mine if r["method"] not in ("before", "RT") and not r["deferred_reasons"]]
        if served:
            lines.append(
                f"- {cell}: RT {_pct(rt['MIA'])}%, methods {_pct(min(served))}–{_pct(max(served))}%, "
                f"RT's RA − TA = {100 * (rt['RA'] - rt['TA']):.1f} points"
            )
    return lines + [
        "",
        "When RA − TA is small the attack (an SVC on confidence, trained on D_r vs the test set) has "
        "little signal: it can end up predicting almost every sample as member, or almost every one as "
        "non-member, and which of the two can flip between models whose predictions barely differ. Avg.D "
        "averages that MIA gap with the FA/RA/TA gaps, so the tables also give Avg.D w/o MIA (FA/RA/TA only).",
    ]


def report_markdown(
    profile: Profile,
    cells: Sequence[Row],
    rows: Sequence[Row],
    skipped: Sequence[Row],
    *,
    env: Row,
    wall_seconds: float,
) -> str:
    """The whole report.md."""
    lines = [
        f"# fedunlearn benchmark — profile `{profile.name}`",
        "",
        f"{len(cells)} cell(s) finished, {len(skipped)} not run; this invocation took {wall_seconds:.0f} s "
        f"(cells' own wall times: {sum(c['wall_seconds'] for c in cells):.0f} s in total). Machine: "
        f"{env['cpu_count']} CPU(s), load average {', '.join(f'{x:.1f}' for x in env['load_average'])} "
        f"(shared machine); python {env['python']}, torch {env['torch']}, flwr {env['flwr']}, "
        f"commit {env['git_commit'][:10]}{' (dirty)' if env['git_dirty'] else ''}.",
        "",
        "Accuracies and MIA in %, Avg.D in percentage points, KL to RT in nats. Bold: best per column among "
        "the methods (closest to RT for FA/RA/TA/MIA/ASR, smallest for Avg.D, KL and time). Storage: bytes a "
        "method must keep (partial amnesiac: the pruned client histories; amnesiac: dense ones; FedEraser: the "
        "server's update log; other methods: none) over dense amnesiac storage.",
        "",
    ]
    lines += summary_lines(rows) + settings_lines(profile)
    for cell in cells:
        mine = [r for r in rows if r["cell"] == cell["cell_id"]]
        frac = mine[0]["affected_fraction"] if mine else None
        lines += [
            f"## {cell['cell_id']}",
            "",
            f"{cell['dataset']} / {cell['model']} / {cell['partition']}; deletion: "
            f"{cell['deletion_detail']} ({mine[0]['num_forget']} samples; {_pct(frac)}% of the client's stored "
            f"steps affected); cell wall time {cell['wall_seconds']:.0f} s.",
            "",
        ]
        lines += cell_table(mine)
        deferred = [f"- {r['method']}: {'; '.join(r['deferred_reasons'])}" for r in mine if r["deferred_reasons"]]
        lines += (["", "Deferred (request not served, model unchanged):", *deferred] if deferred else []) + [""]
    if skipped:
        lines += ["## Cells not run", ""] + [f"- {s['cell_id']}: {s['status']} — {s['reason']}" for s in skipped] + [""]
    return "\n".join(lines)


def tuning_markdown(rows: Sequence[Row]) -> str:
    """Per method variant: mean Avg.D, accuracy gaps and time over the tuning cells; each
    method's best variant (lowest mean Avg.D) first and marked."""
    from simulations.bench_profiles import TUNING_GRID

    lines = [
        "# Tuning (quick cells, seed + 1)",
        "",
        "Per method, the variant served in the most cells and, among "
        "those, with the lowest mean Avg.D to RT over the tuning cells is marked ✓ (a deferred request leaves the "
        "model as it was, so its Avg.D is that of doing nothing).",
        "",
        "| variant | settings | cells | mean Avg.D | mean FA gap | mean RA gap | mean TA gap | mean time s | "
        "mean time % RT | deferred |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    rt = {r["cell"]: r for r in rows if r["method"] == "RT"}
    stats = []
    for variant in sorted({r["method"] for r in rows if "@" in r["method"]}):
        mine = [r for r in rows if r["method"] == variant]
        name, index = variant.split("@")
        gap = {k: sum(100 * abs(r[k] - rt[r["cell"]][k]) for r in mine) / len(mine) for k in ("FA", "RA", "TA")}
        settings = TUNING_GRID.get(name, ({},))[int(index)] if int(index) < len(TUNING_GRID.get(name, ({},))) else {}
        stats.append(
            (
                name,
                sum(r["avg_gap_rt"] for r in mine) / len(mine),
                variant,
                settings,
                len(mine),
                gap,
                sum(r["unlearn_seconds"] for r in mine) / len(mine),
                sum(r["time_fraction_rt"] or 0 for r in mine) / len(mine),
                sum(bool(r["deferred_reasons"]) for r in mine),
            )
        )
    seen: set[str] = set()
    for name, avg, variant, settings, n, gap, secs, frac, deferred in sorted(stats, key=lambda x: (x[0], x[8], x[1])):
        mark = "" if name in seen else " ✓"
        seen.add(name)
        shown = ", ".join(f"{k.removeprefix('unlearn-')}={v}" for k, v in settings.items())
        lines.append(
            f"| {variant}{mark} | {shown} | {n} | {avg:.2f} | {gap['FA']:.1f} | {gap['RA']:.1f} | {gap['TA']:.1f} "
            f"| {secs:.1f} | {100 * frac:.1f} | {deferred} |"
        )
    return "\n".join(lines) + "\n"


def write_outputs(
    profile: Profile,
    cells: Sequence[Row],
    skipped: Sequence[Row],
    out: Path,
    *,
    env: Row,
    tune: bool,
    wall_seconds: float,
) -> list[Path]:
    """Write results.json, report.md (and tuning.md when tuning) and the plots; return the paths."""
    from simulations.bench_plots import write_plots

    rows = [r for cell in cells for r in runs_of(cell)]
    results = {
        "profile": profile.name,
        "profile_settings": dataclasses.asdict(profile),
        "env": env,
        "wall_seconds": wall_seconds,
        "cells": [{k: c[k] for k in ("cell_id", "deletion_detail", "wall_seconds", "method_settings")} for c in cells],
        "skipped": list(skipped),
        "headline": headline(rows),
        "runs": rows,
    }
    written = [write_json_atomic(out / "results.json", results)]
    text = report_markdown(profile, cells, rows, skipped, env=env, wall_seconds=wall_seconds)
    written.append(write_bytes_atomic(out / "report.md", text.encode("utf-8")))
    if tune:
        written.append(write_bytes_atomic(out / "tuning.md", tuning_markdown(rows).encode("utf-8")))
    return written + write_plots(cells, rows, out)
