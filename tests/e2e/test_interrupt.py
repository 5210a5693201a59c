"""End to end: Ctrl-C stops `fedunlearn simulate` within seconds, with nothing left running,
and `--resume` continues the same model from its last checkpoint."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

COMMAND = [
    "simulate",
    "--dataset",
    "digits",
    "--model",
    "mlp",
    "--clients",
    "3",
    "--rounds",
    "12",
    "--cpus",
    "2",
    "--batch-size",
    "16",
]


def processes_mentioning(text: str) -> list[str]:
    """Command lines of live processes that mention ``text`` (Ray's helpers name its temp dir)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                line = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in line:
                found.append(line[:120])
    return found


def completed_round(out: Path) -> int:
    meta = out / "state" / "server" / "checkpoint" / "server.json"
    try:
        return int(json.loads(meta.read_text())["completed_round"])
    except (OSError, ValueError, KeyError):
        return 0


def test_ctrl_c_stops_cleanly_and_resume_finishes_the_same_run(tmp_path: Path, data_root: Path) -> None:
    out = tmp_path / "run"
    ray_tmp = Path(tempfile.mkdtemp(prefix="ray-"))  # short: Ray's socket paths must fit 107 bytes
    env = {**os.environ, "RAY_TMPDIR": str(ray_tmp)}
    command = [sys.executable, "-m", "simulations.cli", *COMMAND, "--data-root", str(data_root), "--out", str(out)]

    # Execute: Ctrl-C once a few rounds are checkpointed. The output goes to files: an unread
    # pipe fills up and blocks the run.
    log_out, log_err = (tmp_path / "stdout.log").open("w"), (tmp_path / "stderr.log").open("w")
    process = subprocess.Popen(command, env=env, stdout=log_out, stderr=log_err, text=True)
    deadline = time.monotonic() + 300
    while completed_round(out) < 2 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
    assert process.poll() is None, "the run ended before it could be interrupted"
    stopped_at = completed_round(out)
    process.send_signal(signal.SIGINT)
    start = time.monotonic()
    process.wait(timeout=60)
    seconds = time.monotonic() - start
    log_out.close(), log_err.close()
    stderr = (tmp_path / "stderr.log").read_text()

    # Assert: it stopped within seconds, said how to go on, and left no Ray process behind.
    assert process.returncode == 130, stderr[-1500:]
    assert seconds < 30
    assert "--resume" in stderr and "Traceback" not in stderr
    time.sleep(3)
    assert processes_mentioning(str(ray_tmp)) == []
    assert 2 <= stopped_at < 12

    # Execute: resume the same command.
    done = subprocess.run([*command, "--resume"], env=env, capture_output=True, text=True, timeout=600)

    # Assert: it continued the checkpointed run (same lineage) up to round 12.
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads((out / "results.json").read_text())
    assert [r["round"] for r in results["rounds"]] == list(range(1, 13))
    history = list((out / "state" / "client-0" / "history").iterdir())
    assert len(history) == 1 and history[0].name == results["summary"]["lineage"]
    shutil.rmtree(ray_tmp, ignore_errors=True)
