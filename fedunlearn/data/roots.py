"""Where dataset files live: an explicit option, else ``$FEDUNLEARN_DATA``, else a default."""

from __future__ import annotations

import os
from pathlib import Path

DATA_ENV_VAR = "FEDUNLEARN_DATA"
DEFAULT_DATA_ROOT = Path.home() / ".fedunlearn" / "data"


def resolve_data_root(root: str | os.PathLike[str] | None = None) -> Path:
    """Return the data root: ``root`` if given, else ``$FEDUNLEARN_DATA``, else ``~/.fedunlearn/data``.

    The same rule holds on every client, so a SuperNode's ``node_config`` can point its
    site at its own folder while simulations share one.
    """
    if root is not None and str(root) != "":
        return Path(root).expanduser().resolve()
    env = os.environ.get(DATA_ENV_VAR, "")
    if env:
        return Path(env).expanduser().resolve()
    return DEFAULT_DATA_ROOT
