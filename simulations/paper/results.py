"""The JSON file behind a figure: settings, seeds, environment and one entry per finished cell.

A figure's run is a sequence of cells (a model, or a model and an affected fraction). The
file is rewritten atomically after every cell, so a stopped run keeps what it finished; run
the same command again and finished cells are skipped (the settings must match, else the
run stops and says how to start afresh). The PNG is always redrawn from this file alone.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch

from fedunlearn.atomic import write_json_atomic
from fedunlearn.errors import ConfigError


def environment() -> dict[str, Any]:
    """What the numbers were measured on (recorded, not compared)."""
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "load_average_start": os.getloadavg(),
    }


class FigureResults:
    """``<out>/<figure>.json``: ``settings``, ``data``, ``cells`` (by key), ``status``.

    >>> import tempfile
    >>> out = Path(tempfile.mkdtemp())
    >>> first = FigureResults(out, "fig9", settings={"seed": 0})
    >>> first.put("mlp", {"FA": 0.1})
    >>> FigureResults(out, "fig9", settings={"seed": 0}).done("mlp")
    True
    """

    def __init__(self, out: Path, figure: str, *, settings: dict[str, Any], fresh: bool = False) -> None:
        out.mkdir(parents=True, exist_ok=True)
        self.path = out / f"{figure}.json"
        self.start = time.perf_counter()
        old = json.loads(self.path.read_text()) if self.path.exists() and not fresh else None
        if old is not None and old.get("settings") != json.loads(json.dumps(settings)):
            raise ConfigError(
                f"{self.path} holds a run with other settings; pass --fresh to overwrite it or choose another --out"
            )
        self.data: dict[str, Any] = old or {
            "figure": figure,
            "settings": settings,
            "env": environment(),
            "data": {},
            "cells": {},
        }
        self.data["status"] = "running"

    def done(self, key: str) -> bool:
        """Whether cell ``key`` finished in this or an earlier run."""
        return key in self.data["cells"]

    def put(self, key: str, value: dict[str, Any]) -> None:
        """Store a finished cell and save."""
        self.data["cells"][key] = value
        self.save()

    def note(self, **facts: Any) -> None:
        """Record facts about the data used (e.g. a fallback dataset) and save."""
        self.data["data"].update(facts)
        self.save()

    def finish(self) -> dict[str, Any]:
        """Mark the run complete, save, return the data."""
        self.data.update(status="complete", wall_seconds=time.perf_counter() - self.start)
        self.save()
        return self.data

    def save(self) -> None:
        """Rewrite the file atomically."""
        write_json_atomic(self.path, self.data)
