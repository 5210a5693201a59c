"""The outside tester's probe: bad and odd input to the `fedunlearn` commands, each case judged.

    python -m simulations.probe --out results/probe          # writes probe.json and probe.md

Every case runs the real command in a subprocess on tiny runs (scikit-learn's digits, an MLP,
3 clients, 2 rounds) and gets one verdict:

- ``clear``: it failed as it should, with exit code 2 and a short message naming the problem,
  no traceback;
- ``OK``: it succeeded as it should (and what it must keep is still there);
- ``traceback``: a Python traceback reached the user;
- ``silent``: it exited 0 where it should have refused, or refused with an unclear message;
- ``data lost``: files it must never delete were gone afterwards.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fedunlearn.atomic import write_bytes_atomic, write_json_atomic

BASE = ["--dataset", "digits", "--model", "mlp", "--clients", "3", "--rounds", "2", "--cpus", "2"]


@dataclass(frozen=True)
class Case:
    """One probe: the command's arguments, whether it must fail, and what its message must name.

    ``setup(out)`` prepares the folder; ``kept(out)`` lists files that must survive.
    """

    name: str
    args: list[str]
    should_fail: bool
    names: tuple[str, ...] = ()
    command: str = "simulate"
    setup: Callable[[Path], None] | None = None
    kept: Callable[[Path], list[Path]] = field(default=lambda out: [])


def _file(out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("not a folder\n")


def _foreign(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "thesis.tex").write_text("precious\n")


def _sched(text: str) -> list[str]:
    return [*BASE, "--deletion-schedule", text]


CASES: tuple[Case, ...] = (
    Case("unknown dataset", ["--dataset", "cifar99", *BASE[2:]], True, ("cifar99",)),
    Case("unknown model", [*BASE[:2], "--model", "gpt", *BASE[4:]], True, ("gpt",)),
    Case("unknown method", [*_sched("2:1:sample:0.1"), "--method", "magic"], True, ("magic", "partial_amnesiac")),
    Case("class 99 of 10", _sched("2:1:class:99"), True, ("class 99",)),
    Case("class the client lacks", [*_sched("2:1:class:3"), "--partition", "by_class"], True, ("class 3",)),
    Case("sample 1e9", _sched("2:1:sample:1e9"), True, ("1e9", "10000000", "count")),
    Case("sample count above the client's share", _sched("2:1:sample:5000"), True, ("5000",)),
    Case("sample nan", _sched("1:1:sample:nan"), True, ("nan",)),
    Case("sample inf", _sched("1:1:sample:inf"), True, ("inf",)),
    Case("sample 0", _sched("1:1:sample:0"), True, ("ARG",)),
    Case("sample -3", _sched("1:1:sample:-3"), True, ("ARG",)),
    Case("duplicate entries", _sched("1:0:sample:3;1:0:sample:3"), True, ("repeats",)),
    Case("client out of range", _sched("1:7:client"), True, ("CLIENT",)),
    Case("round after the last", _sched("5:1:client"), True, ("after the last round",)),
    Case("unknown kind", _sched("1:1:patient"), True, ("KIND",)),
    Case("too few fields", _sched("1:1"), True, ("fields",)),
    Case("client with an argument", _sched("1:1:client:3"), True, ("ARG",)),
    Case("corrupted without corruption", _sched("2:1:corrupted"), True, ("corrupt",)),
    Case("unknown --set key", [*BASE, "--set", "train.speed=3"], True, ("train.speed",)),
    Case("old flat key", [*BASE, "--set", "unlearn-method=sfr_on"], True, ("unlearn.method",)),
    Case("--set without =", [*BASE, "--set", "train.lr"], True, ("KEY=VALUE",)),
    Case("lr nan", [*BASE, "--lr", "nan"], True, ("train.lr",)),
    Case("lr as text", [*BASE, "--set", "train.lr=fast"], True, ("train.lr",)),
    Case("keep ratio 0", [*BASE, "--keep-ratio", "0"], True, ("history.keep-ratio",)),
    Case("zero clients", [*BASE[:4], "--clients", "0", *BASE[6:]], True, ("num-clients",)),
    Case("negative rounds", [*BASE[:6], "--rounds", "-1", *BASE[8:]], True, ("train.rounds",)),
    Case("fraction 0", [*BASE, "--set", "train.fraction=0"], True, ("train.fraction",)),
    Case("unknown partition", [*BASE, "--partition", "shards"], True, ("partition",)),
    Case("unknown method setting", [*BASE, "--set", "unlearn.sfr_on.speed=2"], True, ("unlearn.sfr_on.speed",)),
    Case("method section of a typo", [*BASE, "--set", "unlearn.sfr.iters=2"], True, ("unlearn.sfr",)),
    Case("federaser for a sample request", [*_sched("2:1:sample:0.1"), "--method", "federaser"], True, ("federaser",)),
    Case("missing data root", [*BASE, "--data-root", "/nonexistent/data", "--dataset", "mnist"], True, ("MNIST",)),
    Case("--out is a file", BASE, True, ("is a file",), setup=_file),
    Case(
        "--out holds other files",
        [*BASE, "--overwrite"],
        True,
        ("files no fedunlearn run wrote",),
        setup=_foreign,
        kept=lambda out: [out / "thesis.tex"],
    ),
    Case("--resume with nothing to resume", [*BASE, "--resume"], True, ("resume",)),
    Case("--out not empty", BASE, True, ("not empty",), setup=_foreign, kept=lambda out: [out / "thesis.tex"]),
    Case("whitespace in the schedule", _sched(" 2 : 1 : client "), False),
    Case("a plain run", BASE, False),
    Case("bench: unknown profile", ["--profile", "huge"], True, ("huge",), command="bench"),
    Case("receipts of a missing node", ["--state-dir", "/nonexistent/state"], True, ("state",), command="receipts"),
    Case("forget without ids", ["--state-dir", "{out}"], True, (), command="forget"),
)


def run_case(case: Case, out: Path, env: dict[str, str]) -> dict[str, object]:
    """Run one case and judge it."""
    if case.setup is not None:
        case.setup(out)
    args = [a.replace("{out}", str(out)) for a in case.args]
    if case.command in ("simulate", "bench"):
        args += ["--out", str(out)]
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "simulations.cli", case.command, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    text = done.stderr + done.stdout
    lost = [str(p) for p in case.kept(out) if not p.exists()]
    return {
        "case": case.name,
        "command": f"fedunlearn {case.command} " + " ".join(args),
        "exit": done.returncode,
        "seconds": round(time.monotonic() - start, 1),
        "verdict": verdict(case, done.returncode, text, lost),
        "message": _last_line(done.stderr) or _last_line(done.stdout),
    }


def verdict(case: Case, code: int, text: str, lost: Sequence[str]) -> str:
    """The case's verdict (see the module docstring)."""
    if lost:
        return "data lost"
    if "Traceback (most recent call last)" in text:
        return "traceback"
    if not case.should_fail:
        return "OK" if code == 0 else "silent"
    named = not case.names or any(name in text for name in case.names)
    return "clear" if code == 2 and named else "silent"


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def write_table(rows: Sequence[dict[str, object]], out: Path) -> Path:
    """probe.md: the counts, then one line per case."""
    counts = {v: sum(r["verdict"] == v for r in rows) for v in ("clear", "OK", "traceback", "silent", "data lost")}
    lines = [
        "# Outside probe",
        "",
        ", ".join(f"{v}: {n}" for v, n in counts.items()) + f" ({len(rows)} cases)",
        "",
        "| case | verdict | exit | message |",
        "|---|---|---|---|",
    ]
    lines += [f"| {r['case']} | {r['verdict']} | {r['exit']} | {str(r['message']).replace('|', '/')} |" for r in rows]
    return write_bytes_atomic(out / "probe.md", ("\n".join(lines) + "\n").encode())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m simulations.probe", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("results/probe"), help="where probe.json and probe.md go")
    parser.add_argument("--cases", nargs="*", default=[], help="only cases whose name contains one of these")
    args = parser.parse_args(argv)
    env = {**os.environ}
    rows = []
    for index, case in enumerate(CASES):
        if args.cases and not any(c in case.name for c in args.cases):
            continue
        row = run_case(case, args.out / "cases" / f"{index:02d}", env)
        print(f"[probe] {row['verdict']:<9} {case.name}: {row['message']}", flush=True)
        rows.append(row)
    write_json_atomic(args.out / "probe.json", rows)
    print(f"written: {write_table(rows, args.out)}")
    bad = [r for r in rows if r["verdict"] in ("traceback", "silent", "data lost")]
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
