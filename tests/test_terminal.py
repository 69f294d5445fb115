"""What `fastsend send` shows in a terminal, read off a real one (tmux) as a person sees it."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from fastsend_cli import send_args
from peers import StoreSCP, make_archive
from require import missing_peer

TMUX_HINT = "tmux is not installed: `sudo apt-get install tmux` (or run `bash tests/run.sh`)"


@pytest.fixture
def terminal() -> Iterator[str]:
    """A detached tmux session, 160x40; its name."""
    if shutil.which("tmux") is None:
        missing_peer("no tmux on PATH", TMUX_HINT)
    name = f"fastsend-{uuid.uuid4().hex[:8]}"
    subprocess.run(["tmux", "new-session", "-d", "-s", name, "-x", "160", "-y", "40"], check=True)
    try:
        yield name
    finally:
        subprocess.run(["tmux", "kill-session", "-t", name], check=False)


def screen(session: str) -> str:
    """The pane as shown, joined lines unwrapped."""
    return subprocess.run(
        ["tmux", "capture-pane", "-p", "-J", "-t", session],
        check=True,
        capture_output=True,
        text=True,
    ).stdout


def test_the_progress_bar_ends_at_every_file_with_its_megabytes(
    terminal: str, storescp: StoreSCP, tmp_path: Path
) -> None:
    # The bar is redrawn at most every 0.1 s, not once a file: whatever came
    # after its last redraw must still be on it when the run ends.
    archive = make_archive(tmp_path / "archive", explicit_studies=8, instances_per_study=25)
    total = len(archive.files)
    done = tmp_path / "exit"
    command = [
        sys.executable,
        "-m",
        "dicom_fastsend",
        *send_args(storescp.host, storescp.port, storescp.aet, str(archive.root)),
        "--log-dir",
        str(tmp_path / "logs"),
    ]
    line = f"clear; {shlex.join(command)}; echo $? > {shlex.quote(str(done))}"
    subprocess.run(["tmux", "send-keys", "-t", terminal, line, "Enter"], check=True)
    deadline = time.monotonic() + 90
    while not done.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    shown = screen(terminal)
    assert done.exists(), f"fastsend did not finish in 90 s; the screen:\n{shown}"
    assert done.read_text().strip() == "0", shown
    bars = [row for row in shown.splitlines() if "file/s" in row or "s/file" in row]
    assert bars, f"no progress bar on the screen:\n{shown}"
    bar = bars[-1]
    assert f"{total}/{total}" in bar, bar
    assert "100%" in bar, bar
    (summary,) = (tmp_path / "logs").glob("fastsend_summary_*.json")
    megabytes = json.loads(summary.read_text(encoding="utf-8"))["bytes_sent"] / 1e6
    shown_megabytes = re.search(r"(\d+) MB, [\d.]+ MB/s", bar)
    assert shown_megabytes is not None, bar
    assert int(shown_megabytes[1]) == round(megabytes), (bar, megabytes)
    assert f"{total} files: {total} stored, 0 stored with warning, 0 failed" in shown, shown
    assert len(storescp.files()) == total
