"""Rewrite ``[tool.flwr.app.config]`` in pyproject.toml from FederationConfig's defaults.

Run after adding a config field: ``python tools/sync_run_config.py`` (a unit test checks
that the two agree).
"""

from __future__ import annotations

import re
from pathlib import Path

from fedunlearn.config import FederationConfig

HEADER = "[tool.flwr.app.config]"


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)


def main() -> None:
    """Rewrite the table in place."""
    path = Path(__file__).resolve().parents[1] / "pyproject.toml"
    text = path.read_text(encoding="utf-8")
    body = "\n".join(f"{k} = {_toml(v)}" for k, v in FederationConfig().to_run_config(include_unset=True).items())
    pattern = re.compile(re.escape(HEADER) + r"\n(?:[^\[\n][^\n]*\n?)*")
    if not pattern.search(text):
        raise SystemExit(f"{HEADER} not found in {path}")
    path.write_text(pattern.sub(HEADER + "\n" + body + "\n", text), encoding="utf-8")
    print(f"updated {HEADER} in {path}")


if __name__ == "__main__":
    main()
