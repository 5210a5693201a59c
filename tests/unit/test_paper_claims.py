"""The claims checker: verdicts from figure JSON, with the thresholds it documents."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from simulations.paper.claims import RA_TOLERANCE, affected_claims, curve_claims, main
from simulations.paper.results import FigureResults


def curve(fa: float, ra: float) -> dict[str, Any]:
    return {"FA": [0.95, fa], "RA": [0.97, ra], "TA": [0.96, ra], "steps": [0, 10], "budget": 10}


def cell(partial_ra: float, amnesiac_ra: float, ft_ra: float) -> dict[str, Any]:
    return {
        "model": "lenet",
        "original": {"FA": 0.95, "RA": 0.97, "TA": 0.96},
        "references": {"RT": {"FA": 0.0, "RA": 0.97, "TA": 0.9}, "amnesiac+ft": {"FA": 0.0, "RA": ft_ra, "TA": 0.9}},
        "curves": {
            "amnesiac": curve(0.0, amnesiac_ra),
            "partial_amnesiac": curve(0.02, partial_ra),
            "label_flip": curve(0.0, 0.80),
            "partial_label_flip": curve(0.05, 0.90),
        },
    }


def verdicts(claims: list[dict[str, Any]]) -> dict[str, str]:
    return {c["claim"]: c["verdict"] for c in claims}


def test_the_papers_story_yields_holds_everywhere() -> None:
    found = verdicts(curve_claims("fig1", cell(partial_ra=0.96, amnesiac_ra=0.2, ft_ra=0.95)))

    assert set(found.values()) == {"holds"} and len(found) == 5


def test_a_partial_amnesiac_that_loses_retained_accuracy_is_reported() -> None:
    found = verdicts(curve_claims("fig1", cell(partial_ra=0.97 - RA_TOLERANCE - 0.01, amnesiac_ra=0.2, ft_ra=0.5)))

    assert found["partial amnesiac keeps RA without fine-tuning"] == "does not hold"
    assert found["conventional amnesiac needs fine-tuning (loses RA; fine-tuning restores it)"] == "does not hold"
    assert found["partial amnesiac forgets (FA near RT's)"] == "holds"


def point(fraction: float, amnesiac_ra: float, partial_ra: float) -> dict[str, Any]:
    methods = {"amnesiac": {"RA": amnesiac_ra}, "partial_amnesiac": {"RA": partial_ra}}
    return {"model": "mlp", "affected_fraction": fraction, "original": {"RA": 0.97}, "methods": methods}


def test_fig4_claim_names_the_shares_where_it_holds() -> None:
    cells = {"a": point(0.01, 0.96, 0.97), "b": point(0.05, 0.5, 0.95), "c": point(1.0, 0.1, 0.3)}

    (claim,) = affected_claims(cells)

    assert claim["verdict"] == "holds" and "(holds at 5.0%)" in claim["claim"]
    assert not affected_claims({"c": point(1.0, 0.1, 0.3)})[0]["verdict"] == "holds"


def test_command_writes_the_table_from_a_figure_file(tmp_path: Path) -> None:
    results = FigureResults(tmp_path / "fig1", "fig1", settings={"seed": 0})
    results.put("lenet", cell(partial_ra=0.4, amnesiac_ra=0.1, ft_ra=0.95))

    main(["--fig1", str(tmp_path / "fig1"), "--out", str(tmp_path / "claims")])

    table = (tmp_path / "claims" / "claims.md").read_text()
    rows = json.loads((tmp_path / "claims" / "claims.json").read_text())["claims"]
    assert "| fig1 | lenet | partial amnesiac keeps RA without fine-tuning | RA 97.0 -> 40.0" in table
    assert len(rows) == 5 and {r["figure"] for r in rows} == {"fig1"}


def test_federated_figures_are_read_and_amnesiac_without_reference_is_judged_on_ra(tmp_path: Path) -> None:
    # Prepare: a federated Figure 1 has no fine-tuned amnesiac reference
    federated = cell(partial_ra=0.95, amnesiac_ra=0.96, ft_ra=0.0)
    del federated["references"]["amnesiac+ft"]
    FigureResults(tmp_path / "f", "fig1-federated", settings={"seed": 0}).put("lenet", federated)
    # Execute
    main(["--fig1-federated", str(tmp_path / "f"), "--out", str(tmp_path / "claims")])
    # Assert: both amnesiac versions keep RA here, so neither "loses RA" nor "damages less" holds
    rows = {r["claim"]: r for r in json.loads((tmp_path / "claims" / "claims.json").read_text())["claims"]}
    assert {r["figure"] for r in rows.values()} == {"fig1-federated"}
    assert rows["partial amnesiac keeps RA without fine-tuning"]["verdict"] == "holds"
    assert rows["conventional amnesiac loses RA without fine-tuning"]["verdict"] == "does not hold"
    assert rows["partial_amnesiac damages RA less than amnesiac"]["verdict"] == "does not hold"


def test_a_comparison_with_a_diverged_method_is_not_measured() -> None:
    diverged = cell(partial_ra=0.96, amnesiac_ra=0.2, ft_ra=0.95)
    diverged["curves"]["gradient_ascent"] = {**curve(0.0, 0.1), "diverged_at": 8}
    diverged["curves"]["partial_gradient_ascent"] = curve(0.0, 0.5)

    found = verdicts(curve_claims("fig1", diverged))

    assert found["partial_gradient_ascent damages RA less than gradient_ascent"] == "not measured"
