"""Rewrite ``[tool.flwr.app.config]`` in pyproject.toml from the config dataclasses' defaults.

Run after adding a config field or a method: ``python tools/sync_run_config.py`` (a unit
test checks that the two agree). The table is written in sections, one TOML table per
run-config section (``[tool.flwr.app.config.train]``, ``[tool.flwr.app.config.unlearn.sfr_on]``);
Flower flattens it back to the dotted keys ``train.lr``, ``unlearn.sfr_on.iters``. The
tables are the last thing in pyproject.toml: everything from the first of them is rewritten.
"""

from __future__ import annotations

from pathlib import Path

from fedunlearn.config import FederationConfig
from fedunlearn.run_config import config_to_flat

HEADER = "[tool.flwr.app.config]"


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)


def config_tables() -> str:
    """The sectioned tables for the default config (None written as ``""``)."""
    tables: dict[str, list[str]] = {}
    for key, value in config_to_flat(FederationConfig(), include_unset=True).items():
        section, _, name = key.rpartition(".")
        tables.setdefault(section, []).append(f"{name} = {_toml(value)}")
    lines = [
        HEADER,
        "# Mirrors the defaults of fedunlearn.config (regenerate: python tools/sync_run_config.py).",
        "# Flower flattens these tables to dotted keys: --run-config 'train.lr=0.1 unlearn.method=\"sfr_on\"'.",
    ]
    for section, body in tables.items():
        lines += ["", f"[tool.flwr.app.config.{section}]", *body]
    return "\n".join(lines) + "\n"


def main() -> None:
    """Rewrite the tables in place."""
    path = Path(__file__).resolve().parents[1] / "pyproject.toml"
    text = path.read_text(encoding="utf-8")
    if HEADER not in text:
        raise SystemExit(f"{HEADER} not found in {path}")
    path.write_text(text[: text.index(HEADER)] + config_tables(), encoding="utf-8")
    print(f"updated {HEADER} in {path}")


if __name__ == "__main__":
    main()
