"""What `fastsend send` shows in a terminal, read off a real one (tmux) as a person sees it."""

from __future__ import annotations

import json
import os
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


class Terminal:
    """A 160x40 terminal of a tmux server of its own (no user configuration, no shell)."""

    def __init__(self) -> None:
        self.socket = f"fastsend-test-{uuid.uuid4().hex[:8]}"
        self.socket_path: Path | None = None  # known once the server runs

    def tmux(self, *args: str) -> str:
        return subprocess.run(
            ["tmux", "-L", self.socket, "-f", "/dev/null", *args],
            check=True,
            capture_output=True,
            text=True,
        ).stdout

    def run(self, command: list[str], exit_file: Path) -> None:
        """Run ``command`` in the terminal; its exit status lands in ``exit_file`` (whole).

        The pane stays open afterwards, so it can still be read.
        """
        partial = exit_file.with_suffix(".partial")
        script = (
            f"{shlex.join(command)}; echo $? > {shlex.quote(str(partial))};"
            f" mv {shlex.quote(str(partial))} {shlex.quote(str(exit_file))}; exec sleep 600"
        )
        self.tmux("new-session", "-d", "-x", "160", "-y", "40", "sh", "-c", script)
        self.socket_path = Path(self.tmux("display-message", "-p", "#{socket_path}").strip())

    def screen(self) -> str:
        """The pane as shown, wrapped lines joined."""
        return self.tmux("capture-pane", "-p", "-J")


@pytest.fixture
def terminal() -> Iterator[Terminal]:
    if shutil.which("tmux") is None:
        missing_peer("no tmux on PATH", TMUX_HINT)
    shown = Terminal()
    try:
        yield shown
    finally:
        subprocess.run(
            ["tmux", "-L", shown.socket, "kill-server"], check=False, capture_output=True
        )
        if shown.socket_path is not None:  # tmux leaves it behind when killed
            shown.socket_path.unlink(missing_ok=True)


def test_the_progress_bar_ends_at_every_file_with_its_megabytes(
    terminal: Terminal, storescp: StoreSCP, tmp_path: Path
) -> None:
    # The bar is redrawn at most every 0.1 s, not once a file: whatever came
    # after its last redraw must still be on it when the run ends. 450 files
    # of 128 KB: a run of some tenths of a second, and megabytes enough that
    # a lost batch of files would show.
    archive = make_archive(
        tmp_path / "archive", explicit_studies=8, instances_per_study=50, rows=256, columns=256
    )
    total = len(archive.files)
    done = tmp_path / "exit"
    command = [
        "env",
        "-u",
        "FASTSEND_PURE_PYTHON",
        f"PATH={os.environ.get('PATH', '')}",
        sys.executable,
        "-m",
        "dicom_fastsend",
        *send_args(storescp.host, storescp.port, storescp.aet, str(archive.root)),
        "--log-dir",
        str(tmp_path / "logs"),
    ]
    terminal.run(command, done)
    deadline = time.monotonic() + 90
    while not done.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    shown = terminal.screen()
    assert done.exists(), f"fastsend did not finish in 90 s; the screen:\n{shown}"
    assert done.read_text().strip() == "0", shown
    bars = [row for row in shown.splitlines() if "file/s" in row or "s/file" in row]
    assert bars, f"no progress bar on the screen:\n{shown}"
    bar = bars[-1]
    assert f"{total}/{total}" in bar, bar
    assert "100%" in bar, bar
    (summary,) = (tmp_path / "logs").glob("fastsend_summary_*.json")
    megabytes = json.loads(summary.read_text(encoding="utf-8"))["bytes_sent"] / 1e6
    assert megabytes > 40, megabytes
    shown_megabytes = re.search(r"(\d+) MB, [\d.]+ MB/s", bar)
    assert shown_megabytes is not None, bar
    assert int(shown_megabytes[1]) == round(megabytes), (bar, megabytes)
    assert f"{total} files: {total} stored, 0 stored with warning, 0 failed" in shown, shown
    assert len(storescp.files()) == total
