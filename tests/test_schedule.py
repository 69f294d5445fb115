"""--schedule and the pause: the parser, the windows, the pacer (pure, a fake clock),
then a real run that pauses and resumes on time against DCMTK's storescp, and SIGUSR1."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from dicom_fastsend.engine.schedule import (
    Pacer,
    ScheduleError,
    Setting,
    parse_schedule,
)
from peers import StoreSCP, make_archive, start_storescp

MONDAY = datetime(2026, 11, 30)  # a Monday
ISSUE_EXAMPLE = "Mon-Fri 19:00-07:00=0; Mon-Fri 07:00-19:00=20; Sat-Sun=0"


def at(text: str, moment: datetime, outside: float = 0.0) -> tuple[Setting, datetime | None]:
    return parse_schedule(text).at(moment, Setting(rate_mb_s=outside))


# ---------------------------------------------------------------- the windows


def test_the_issue_example_by_hour() -> None:
    # Monday 06:59: nobody's window yet on Monday morning (the overnight one
    # starts Monday 19:00), so --max-rate (here 5) holds until 07:00.
    setting, change = at(ISSUE_EXAMPLE, MONDAY.replace(hour=6, minute=59), outside=5)
    assert setting == Setting(rate_mb_s=5)
    assert change == MONDAY.replace(hour=7)
    setting, change = at(ISSUE_EXAMPLE, MONDAY.replace(hour=12))
    assert setting.rate_mb_s == 20 and setting.window == "Mon-Fri 07:00-19:00=20"
    assert change == MONDAY.replace(hour=19)
    # The overnight window runs into Tuesday, until 07:00.
    setting, change = at(ISSUE_EXAMPLE, MONDAY + timedelta(days=1, hours=3))
    assert setting.window == "Mon-Fri 19:00-07:00=0"
    assert change == MONDAY + timedelta(days=1, hours=7)


def test_friday_night_runs_into_saturday_and_the_first_window_wins() -> None:
    saturday_3am = MONDAY + timedelta(days=5, hours=3)
    text = "Mon-Fri 19:00-07:00=3; Sat-Sun=pause"
    setting, change = at(text, saturday_3am)
    assert setting.rate_mb_s == 3 and not setting.paused
    assert change == MONDAY + timedelta(days=5, hours=7)
    setting, change = at(text, saturday_3am + timedelta(hours=5))
    assert setting.paused
    # Sunday's whole-day pause ends Monday 00:00, where no window is.
    assert change == MONDAY + timedelta(days=7)


def test_a_range_over_the_weekend_and_a_comma_list() -> None:
    setting, _ = at("Fri-Mon=pause", MONDAY + timedelta(days=6, hours=12))  # Sunday
    assert setting.paused
    setting, _ = at("Fri-Mon=pause", MONDAY + timedelta(days=2))  # Wednesday
    assert not setting.paused
    setting, _ = at("Tue,Thu 10:00-11:00=7", MONDAY + timedelta(days=3, hours=10, minutes=30))
    assert setting.rate_mb_s == 7


def test_24_00_ends_a_day() -> None:
    setting, change = at("Tue 00:00-24:00=pause", MONDAY + timedelta(days=1, hours=23))
    assert setting.paused and change == MONDAY + timedelta(days=2)
    setting, change = at("Tue 18:00-24:00=4", MONDAY + timedelta(days=1, hours=23))
    assert setting.rate_mb_s == 4 and change == MONDAY + timedelta(days=2)


def test_a_schedule_that_never_changes_says_so() -> None:
    setting, change = at("Mon-Sun=pause", MONDAY)
    assert setting.paused and change is None


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("Mon-Fri 07:00-19:00", "'Mon-Fri 07:00-19:00'"),  # no value
        ("Mon-Fri 07:00-19:00=fast", "'fast'"),
        ("Mon-Fri 07:00-19:00=-1", "'-1'"),
        ("Mon-Fry=1", "'Fry'"),
        ("Mon-Fri 25:00-19:00=1", "25:00"),
        ("Mon 07:00-07:00=1", "starts and ends at the same time"),
        ("Mon-Tue-Wed=1", "'Mon-Tue-Wed'"),
        (" ; ", "no window"),
    ],
)
def test_a_bad_schedule_names_the_window(text: str, named: str) -> None:
    with pytest.raises(ScheduleError, match=named.replace("(", r"\(")):
        parse_schedule(text)


# ---------------------------------------------------------------- the pacer


class FakeClock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def test_the_pacer_pauses_resumes_and_records_on_the_clock() -> None:
    clock = FakeClock(MONDAY.replace(hour=18, minute=59))
    pacer = Pacer(
        parse_schedule("Mon 19:00-19:05=pause; Mon 19:05-20:00=2"),
        9,
        clock,
        wall=lambda: clock.now.timestamp(),
    )
    assert pacer.update()  # says where it starts
    assert not pacer.paused and pacer.rate_mb_s == 9
    clock.now = MONDAY.replace(hour=19, second=1)  # the loop looks a second late
    notes = pacer.update()
    assert pacer.paused and any("paused" in text for _, text in notes)
    # The record names the window's boundary; the real time is when it paused.
    assert pacer.pauses[0].paused_at == MONDAY.replace(hour=19)
    assert pacer.pauses[0].started == clock.now.timestamp()
    clock.now = MONDAY.replace(hour=19, minute=4, second=59)
    assert pacer.update() == [] and pacer.paused
    clock.now = MONDAY.replace(hour=19, minute=5)
    notes = pacer.update()
    assert not pacer.paused and pacer.rate_mb_s == 2
    assert any("resumed" in text and "299.0 s" in text for _, text in notes), notes
    assert pacer.pauses[0].resumed_at == clock.now
    assert pacer.pauses[0].seconds == 299
    clock.now = MONDAY.replace(hour=20)
    pacer.update()
    assert pacer.rate_mb_s == 9  # back to --max-rate outside the windows


def test_sigusr1_toggles_a_manual_pause_without_a_schedule() -> None:
    clock = FakeClock(MONDAY)
    pacer = Pacer(None, 0, clock)
    assert pacer.update() == []
    pacer.toggle_manual()
    pacer.update()
    assert pacer.paused and pacer.pauses[-1].why == "SIGUSR1"
    clock.now += timedelta(minutes=1)
    pacer.toggle_manual()
    pacer.update()
    assert not pacer.paused and pacer.pauses[-1].resumed_at == clock.now


# ---------------------------------------------------------------- a real run


def run_cli(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    environment = dict(os.environ, **env)
    environment.pop("FASTSEND_PURE_PYTHON", None)
    return subprocess.Popen(
        [sys.executable, "-m", "dicom_fastsend", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment,
    )


def summary_of(log_dir: Path) -> dict[str, object]:
    (path,) = log_dir.glob("fastsend_summary_*.json")
    result: dict[str, object] = json.loads(path.read_text())
    return result


def arrivals(scp: StoreSCP) -> list[float]:
    """When storescp finished writing each file (time.time() scale), in order."""
    return sorted(path.stat().st_mtime for path in scp.files())


# The window rates of the real runs: 20 kB/s spreads the 24 files (about
# 3 kB each) over some 4 s.
SLOW = "0.02"


def send_args(scp: StoreSCP, archive: Path, log_dir: Path) -> list[str]:
    return [
        "send",
        "-a",
        scp.aet,
        "-H",
        scp.host,
        "-p",
        str(scp.port),
        "-r",
        "-i",
        str(archive),
        "--log-dir",
        str(log_dir),
        "--no-progress",
    ]


def test_a_pause_window_pauses_and_resumes_on_time(tmp_path: Path) -> None:
    """The schedule's clock starts on Monday 18:59:30 and runs 30 times as fast: the
    run sends at 20 kB/s for a second, pauses from 19:00 to 19:01 (2 real
    seconds), then sends the rest by itself."""
    archive = make_archive(tmp_path / "in", explicit_studies=6, implicit_studies=2)
    log_dir = tmp_path / "logs"
    with start_storescp(tmp_path / "out") as scp:
        process = run_cli(
            [
                *send_args(scp, archive.root, log_dir),
                "--schedule",
                f"Mon 19:00-19:01=pause; Mon={SLOW}",
            ],
            {"FASTSEND_SCHEDULE_CLOCK": "2026-11-30T18:59:30*30"},
        )
        stdout, stderr = process.communicate(timeout=60)
        assert process.returncode == 0, stdout + stderr
        times = arrivals(scp)
    assert len(times) == len(archive.files)
    summary = summary_of(log_dir)
    pauses = summary["pauses"]
    assert isinstance(pauses, list) and len(pauses) == 1, summary
    (pause,) = pauses
    assert pause["reason"] == "schedule window 'Mon 19:00-19:01=pause'"
    assert (pause["paused_at"], pause["resumed_at"]) == (
        "2026-11-30T19:00:00",
        "2026-11-30T19:01:00",
    )
    # One schedule minute is 2 real seconds; the loop looks at the clock at
    # least every 0.2 s.
    assert 1.7 <= pause["seconds"] <= 2.6, pause
    # What the receiver saw: files before the pause, none during it once the
    # batch in hand (1 s of sending at the window's rate) was done, the rest after.
    log = next(log_dir.glob("fastsend_*.log")).read_text()
    paused_at = _log_time(log, "paused (schedule window")
    resumed_at = paused_at + pause["seconds"]
    before = [t for t in times if t < paused_at]
    during = [t for t in times if paused_at + 1.3 < t < resumed_at]
    after = [t for t in times if t >= resumed_at]
    assert before and after and not during, (paused_at, resumed_at, times)
    assert after[0] - resumed_at < 1.5  # new workers, new association, at once
    assert "resumed at 2026-11-30 19:01:00" in log
    # And the rate of the window "Mon=0.02" held: 20 kB/s.
    sent = summary["bytes_sent"]
    assert isinstance(sent, int)
    assert times[-1] - times[0] - pause["seconds"] >= 0.7 * sent / 20_000


def _log_time(log: str, marker: str) -> float:
    """The time.time() of the first log line holding ``marker``."""
    from datetime import datetime as dt

    for line in log.splitlines():
        if marker in line:
            return dt.fromisoformat(line.split()[0]).timestamp()
    raise AssertionError(f"{marker!r} not in the log:\n{log}")


def test_sigusr1_pauses_and_resumes_a_run(tmp_path: Path) -> None:
    archive = make_archive(tmp_path / "in", explicit_studies=6, implicit_studies=2)
    log_dir = tmp_path / "logs"
    with start_storescp(tmp_path / "out") as scp:
        process = run_cli([*send_args(scp, archive.root, log_dir), "--max-rate", SLOW], {})
        deadline = time.monotonic() + 30
        while len(scp.files()) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        process.send_signal(signal.SIGUSR1)
        time.sleep(1.3)  # the batch in hand: 1 s of sending at --max-rate
        held = len(scp.files())
        time.sleep(1.5)
        assert len(scp.files()) == held < len(archive.files)
        process.send_signal(signal.SIGUSR1)
        stdout, stderr = process.communicate(timeout=60)
        assert process.returncode == 0, stdout + stderr
        assert len(scp.files()) == len(archive.files)
    pauses = summary_of(log_dir)["pauses"]
    assert isinstance(pauses, list) and [p["reason"] for p in pauses] == ["SIGUSR1"]
    assert 2.5 <= pauses[0]["seconds"] <= 3.5


def test_a_bad_schedule_is_a_usage_error_naming_the_window(tmp_path: Path) -> None:
    from fastsend_cli import fastsend

    run = fastsend(
        "send", "-a", "X", "-H", "127.0.0.1", "-p", "104", "-i", str(tmp_path),
        "--schedule", "Mon-Fri 07:00-19:00=20; Sat-Sunday=paws",
    )  # fmt: skip
    assert run.returncode == 2, run.output
    assert "'Sat-Sunday=paws'" in run.stderr and "'paws'" in run.stderr, run.stderr


def test_a_new_window_changes_the_rate_of_a_running_send(tmp_path: Path) -> None:
    """10 kB/s until 19:00 (2 s after the start, at real speed), then no limit: the
    workers started at 10 kB/s are replaced by unlimited ones, and the 24 files
    (72 kB, 7 s at 10 kB/s) are done soon after 19:00."""
    archive = make_archive(tmp_path / "in", explicit_studies=6, implicit_studies=2)
    log_dir = tmp_path / "logs"
    # --fork: one storescp per association, as -P 2 needs.
    with start_storescp(tmp_path / "out", fork=True) as scp:
        process = run_cli(
            [
                *send_args(scp, archive.root, log_dir),
                "-P",
                "2",
                "--schedule",
                "Mon 00:00-19:00=0.01; Mon 19:00-20:00=0",
            ],
            {"FASTSEND_SCHEDULE_CLOCK": "2026-11-30T18:59:58"},
        )
        stdout, stderr = process.communicate(timeout=60)
        assert process.returncode == 0, stdout + stderr
        times = arrivals(scp)
    assert len(times) == len(archive.files)
    log = next(log_dir.glob("fastsend_*.log")).read_text()
    change = _log_time(log, "schedule: window 'Mon 19:00-20:00=0': no rate limit")
    slow = [t for t in times if t < change]
    assert 1 <= len(slow) < len(times) // 2, (change, times)
    # The rest: within the batch in hand (1 s at 10 kB/s) and a new association.
    assert times[-1] - change < 2.0, (change, times)
