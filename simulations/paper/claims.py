"""The paper's qualitative claims, checked against finished figure runs.

    python -m simulations.paper claims --fig1 DIR [--fig2 DIR] [--fig4 DIR] [--fig1-federated DIR] ... --out DIR

reads ``fig1.json`` / ``fig2.json`` / ``fig4.json`` (and the ``--federated`` runs'
``fig1-federated.json`` / ``fig2-federated.json`` / ``fig4-federated.json``) from those folders and writes
``claims.md`` and ``claims.json``: one row per claim and model with the numbers it rests
on and a verdict. The thresholds are fixed here, before looking at any run:

- "keeps retained accuracy": RA after unlearning at most ``RA_TOLERANCE`` (5 points) below
  the model before unlearning;
- "forgets": FA after unlearning at most ``FA_TOLERANCE`` (10 points) above RT's;
- "damages RA less": the partial version's RA above the naive one's by more than
  ``DIFFERENCE`` (1 point); its FA is shown too, since forgetting less also costs less.
  When either version's loss became NaN before its budget was spent, the comparison is
  "not measured".
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from fedunlearn.atomic import write_json_atomic

RA_TOLERANCE = 0.05
FA_TOLERANCE = 0.10
DIFFERENCE = 0.01
Claim = dict[str, Any]
Point = dict[str, float]
Finals = dict[str, Point]


def pct(x: float) -> str:
    """A fraction as a percentage with one decimal."""
    return f"{100 * x:.1f}"


def _verdict(ok: bool) -> str:
    return "holds" if ok else "does not hold"


def _keeps(final: dict[str, float], original: dict[str, float]) -> bool:
    return final["RA"] >= original["RA"] - RA_TOLERANCE


def _claim(where: dict[str, str], claim: str, ok: bool, numbers: str) -> Claim:
    return {**where, "claim": claim, "verdict": _verdict(ok), "numbers": numbers}


def _partial_amnesiac(where: dict[str, str], final: Finals, original: Point, refs: Finals) -> list[Claim]:
    p = final["partial_amnesiac"]
    out = [
        _claim(
            where,
            "partial amnesiac keeps RA without fine-tuning",
            _keeps(p, original),
            f"RA {pct(original['RA'])} -> {pct(p['RA'])} (FA {pct(original['FA'])} -> {pct(p['FA'])})",
        )
    ]
    if "RT" in refs:
        ok = p["FA"] <= refs["RT"]["FA"] + FA_TOLERANCE
        out.append(
            _claim(
                where, "partial amnesiac forgets (FA near RT's)", ok, f"FA {pct(p['FA'])}, RT {pct(refs['RT']['FA'])}"
            )
        )
    return out


def _amnesiac(where: dict[str, str], final: Finals, original: Point, refs: Finals) -> list[Claim]:
    a, ft = final["amnesiac"], refs["amnesiac+ft"]
    return [
        _claim(
            where,
            "conventional amnesiac needs fine-tuning (loses RA; fine-tuning restores it)",
            not _keeps(a, original) and _keeps(ft, original),
            f"RA {pct(original['RA'])} -> {pct(a['RA'])}, after fine-tuning {pct(ft['RA'])}",
        )
    ]


def _partial_steps(where: dict[str, str], final: Finals, naive: str, curves: dict[str, Any]) -> list[Claim]:
    n, p = final[naive], final[f"partial_{naive}"]
    failed = [x for x in (naive, f"partial_{naive}") if curves[x].get("diverged_at") is not None]
    if failed:
        claim = f"partial_{naive} damages RA less than {naive}"
        return [{**where, "claim": claim, "verdict": "not measured", "numbers": f"NaN loss in {', '.join(failed)}"}]
    return [
        _claim(
            where,
            f"partial_{naive} damages RA less than {naive}",
            p["RA"] > n["RA"] + DIFFERENCE,
            f"RA {pct(p['RA'])} vs {pct(n['RA'])}; FA {pct(p['FA'])} vs {pct(n['FA'])}",
        )
    ]


def curve_claims(figure: str, cell: dict[str, Any]) -> list[Claim]:
    """The claims Figures 1-2 test, for one model (rows whose methods were not run are left out)."""
    final = {label: {k: c[k][-1] for k in ("FA", "RA", "TA")} for label, c in cell["curves"].items()}
    original, refs = cell["original"], cell["references"]
    where = {"figure": figure, "model": cell["model"]}
    out = _partial_amnesiac(where, final, original, refs) if "partial_amnesiac" in final else []
    if "amnesiac" in final and "amnesiac+ft" in refs:
        out += _amnesiac(where, final, original, refs)
    elif "amnesiac" in final:  # no fine-tuned reference (the federated figures): the first half only
        a = final["amnesiac"]
        numbers = f"RA {pct(original['RA'])} -> {pct(a['RA'])} (FA {pct(original['FA'])} -> {pct(a['FA'])})"
        out.append(
            _claim(where, "conventional amnesiac loses RA without fine-tuning", not _keeps(a, original), numbers)
        )
    for naive in ("amnesiac", "label_flip", "gradient_ascent"):
        if naive in final and f"partial_{naive}" in final:
            out += _partial_steps(where, final, naive, cell["curves"])
    return out


def _point_text(c: dict[str, Any]) -> str:
    ra = (c["original"]["RA"], c["methods"]["amnesiac"]["RA"], c["methods"]["partial_amnesiac"]["RA"])
    return f"{pct(c['affected_fraction'])}%: RA {pct(ra[0])} -> amnesiac {pct(ra[1])} / partial {pct(ra[2])}"


def affected_claims(cells: dict[str, Any]) -> list[Claim]:
    """Figure 4: partial amnesiac keeps efficacy where conventional amnesiac loses it."""
    out = []
    for model in dict.fromkeys(c["model"] for c in cells.values()):
        points = sorted((c for c in cells.values() if c["model"] == model), key=lambda c: c["affected_fraction"])
        both = [
            c
            for c in points
            if _keeps(c["methods"]["partial_amnesiac"], c["original"])
            and not _keeps(c["methods"]["amnesiac"], c["original"])
        ]
        where = f" (holds at {', '.join(pct(c['affected_fraction']) + '%' for c in both)})" if both else ""
        claim = "partial amnesiac keeps efficacy at affected-batch shares where amnesiac loses it" + where
        out.append(_claim({"figure": "fig4", "model": model}, claim, bool(both), "; ".join(map(_point_text, points))))
    return out


def _curves(figure: str, data: dict[str, Any]) -> list[Claim]:
    return [c for cell in data["cells"].values() for c in curve_claims(figure, cell)]


def _affected(figure: str, data: dict[str, Any]) -> list[Claim]:
    return [{**c, "figure": figure} for c in affected_claims(data["cells"])]


#: Figure (its JSON's stem, and the option naming its folder) -> the claims it tests.
READERS: dict[str, Callable[[str, dict[str, Any]], list[Claim]]] = {
    "fig1": _curves,
    "fig2": _curves,
    "fig4": _affected,
    "fig1-federated": _curves,
    "fig2-federated": _curves,
    "fig4-federated": _affected,
}


def markdown(claims: list[Claim]) -> str:
    """The claims table."""
    lines = ["| figure | model | claim | numbers (%) | verdict |", "|---|---|---|---|---|"]
    lines += [f"| {c['figure']} | {c['model']} | {c['claim']} | {c['numbers']} | **{c['verdict']}** |" for c in claims]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """``fedunlearn paper claims``."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for figure in READERS:
        parser.add_argument(f"--{figure}", type=Path, default=None, help=f"folder holding {figure}.json")
    parser.add_argument("--out", type=Path, required=True, help="folder for claims.md and claims.json")
    args = parser.parse_args(None if argv is None else list(argv))
    claims: list[Claim] = []
    for figure, read in READERS.items():
        folder = getattr(args, figure.replace("-", "_"))
        if folder is not None:
            claims += read(figure, json.loads((folder / f"{figure}.json").read_text()))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "claims.md").write_text(markdown(claims))
    write_json_atomic(
        args.out / "claims.json", {"thresholds": {"ra": RA_TOLERANCE, "fa": FA_TOLERANCE}, "claims": claims}
    )
    print(markdown(claims))
    return 0


if __name__ == "__main__":
    sys.exit(main())
