"""`fastsend send` against a hostile SCP: every fault ends the run in time, loses nothing,
and tells the user which file failed and why.

Each test runs the real command in a subprocess (its own process group, killed
if it outlives its bound) against tests/hostile.py, then checks:

- the process ended within a bound, with the README's exit code
  (0 all stored, 1 some failed, 3 no association could be made);
- the "nothing lost" invariant on the JSON summary and session log (tests/invariants.py);
- the faulted file's line on stderr names it and the reason;
- every other file was stored, as the hostile SCP recorded it: the run goes on.

fastsend retries transient failures (``--retries``, default 3). The tests of
the faults themselves pass ``--retries 0`` so that each fault is seen once;
the retry tests at the end pass a count and a short first delay.
"""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from hostile import (
    AbortMidDataset,
    HostileSCP,
    Malformed,
    MalformedKind,
    NoResponse,
    Reject,
    ResetMidDataset,
    Respond,
    Script,
    Trickle,
)
from invariants import assert_nothing_lost, load_summary, log_messages, session_log
from peers import SynthArchive, make_archive
from waiting import wait_until

# Short waits at every protocol step so that a fault costs seconds, not minutes.
TIMEOUTS = ("--dimse-timeout", "2", "--acse-timeout", "2", "--connect-timeout", "2")
# A run that needs no timeout to fire ends in about a second; this is the bound
# for those, leaving room for a loaded CI machine.
QUICK = 20.0


def retries(count: int) -> list[str]:
    """``--retries count``, and a short first delay when there are retries."""
    return ["--retries", str(count), *(["--retry-delay", "0.1"] if count else [])]


@dataclass(frozen=True)
class Run:
    returncode: int
    stderr: str
    seconds: float
    summary: dict[str, Any]
    log_dir: Path

    def failure(self, path: str) -> dict[str, Any]:
        entries: list[dict[str, Any]] = [f for f in self.summary["failures"] if f["path"] == path]
        assert len(entries) == 1, f"{path}: {len(entries)} failures in the summary"
        return entries[0]

    def stderr_line(self, prefix: str, path: str) -> str:
        """The stderr line ``<prefix> <path>: ...`` (exactly one)."""
        lines = [ln for ln in self.stderr.splitlines() if ln.startswith(f"{prefix} {path}: ")]
        assert len(lines) == 1, f"expected one '{prefix} {path}:' line in:\n{self.stderr}"
        return lines[0]

    def log(self) -> list[str]:
        return log_messages(session_log(self.summary, self.log_dir))


def send(
    scp: HostileSCP,
    archive: SynthArchive,
    tmp_path: Path,
    *options: str,
    bound: float = QUICK,
    implementation: str = "cython",
) -> Run:
    """Run `fastsend send` to the hostile SCP; fail the test if it outlives ``bound`` s."""
    log_dir = tmp_path / "logs"
    command = [
        sys.executable, "-m", "dicom_fastsend", "send", "-i", str(archive.root), "-r",
        "-a", scp.ae_title, "-H", "127.0.0.1", "-p", str(scp.port), "--log-dir", str(log_dir),
        "--no-progress", *TIMEOUTS, *options,
    ]  # fmt: skip
    env = dict(os.environ)
    env.pop("FASTSEND_PURE_PYTHON", None)
    if implementation == "python":
        env["FASTSEND_PURE_PYTHON"] = "1"
    started = time.monotonic()
    # Own process group: on a hang the coordinator and its workers are killed together.
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        _, stderr = process.communicate(timeout=bound)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        _, stderr = process.communicate(timeout=10)
        pytest.fail(f"fastsend did not end within {bound:g} s; stderr:\n{stderr}")
    seconds = time.monotonic() - started
    assert "Traceback" not in stderr, stderr
    scp.wait_idle()
    summary = load_summary(log_dir)
    assert summary["exit_code"] == process.returncode, (summary["exit_code"], stderr)
    return Run(process.returncode, stderr, seconds, summary, log_dir)


@pytest.fixture
def archive(tmp_path: Path) -> SynthArchive:
    """2 studies x 3 CT instances of about 9.6 kB: each data set spans 3 PDUs of 4 kB."""
    return make_archive(
        tmp_path / "archive", explicit_studies=2, implicit_studies=0, instances_per_study=3,
        rows=64, columns=64,
    )  # fmt: skip


def inputs(archive: SynthArchive) -> list[str]:
    return [str(p) for p in archive.files]


def path_of(archive: SynthArchive, sop_instance_uid: str) -> str:
    [path] = [str(p) for p, uid in archive.sop_instance_uids.items() if uid == sop_instance_uid]
    return path


def assert_others_stored(run: Run, scp: HostileSCP, archive: SynthArchive, faulted: str) -> None:
    """Every file but ``faulted`` is stored: in the summary, and once each at the SCP."""
    stored = assert_nothing_lost(run.summary, inputs(archive), run.log_dir)
    assert stored == set(inputs(archive)) - {faulted}, run.stderr
    received = Counter(scp.stored_uids())
    expected = archive.uids - {archive.sop_instance_uids[Path(faulted)]}
    assert set(received) == expected
    assert all(n == 1 for n in received.values()), received


# --------------------------------------------------------------------------
# The invariant itself must be able to fail


def test_the_invariant_catches_a_lost_or_misreported_file(
    archive: SynthArchive, tmp_path: Path
) -> None:
    with HostileSCP(Script(stores={2: Respond(status=0xA700)})) as scp:
        run = send(scp, archive, tmp_path, *retries(0))
    good = run.summary
    assert_nothing_lost(good, inputs(archive), run.log_dir)
    [failed] = good["failures"]

    def broken(change: Callable[[dict[str, Any]], object]) -> dict[str, Any]:
        summary = copy.deepcopy(good)
        change(summary)
        return summary

    tampered = [
        broken(lambda s: s["failures"].clear()),  # the failed file vanished
        broken(lambda s: s["counts"].update(stored=s["counts"]["stored"] - 1)),
        broken(lambda s: s["skipped"].append({"path": failed["path"], "reason": "twice"})),
        broken(lambda s: s["failures"][0].update(reason="")),
        broken(lambda s: s["failures"][0].update(status="A700")),
        broken(lambda s: s["failures"][0].update(status=None)),  # reason names 0xA700
    ]
    for summary in tampered:
        with pytest.raises((AssertionError, jsonschema.ValidationError)):
            assert_nothing_lost(summary, inputs(archive), run.log_dir)
    # An input the run never reported on.
    extra = str(tmp_path / "archive" / "never-seen.dcm")
    with pytest.raises(AssertionError, match="inputs"):
        assert_nothing_lost(good, [*inputs(archive), extra], run.log_dir)
    # A stored file without its "stored" line in the session log.
    log = session_log(good, run.log_dir)
    stored = sorted(set(inputs(archive)) - {failed["path"]})[0]
    log.write_text(
        "".join(ln for ln in log.read_text().splitlines(True) if f"stored {stored} " not in ln)
    )
    with pytest.raises(AssertionError, match="stored"):
        assert_nothing_lost(good, inputs(archive), run.log_dir)


# --------------------------------------------------------------------------
# Association rejected (PS3.8 9.3.4)


@pytest.mark.parametrize(
    ("reject", "words"),
    [
        pytest.param(
            Reject(result=1, source=1, reason=7),
            ["rejected-permanent", "DICOM UL service-user", "called-AE-title-not-recognized",
             "Check that the destination knows called AE title 'HOSTILE'"],
            id="permanent",
        ),
        pytest.param(
            Reject(result=2, source=3, reason=1),
            ["rejected-transient", "service-provider (Presentation related function)",
             "temporary-congestion", "try again later"],
            id="transient",
        ),
    ],
)  # fmt: skip
def test_rejected_association_exits_3_and_says_why_in_words(
    archive: SynthArchive, tmp_path: Path, reject: Reject, words: list[str]
) -> None:
    with HostileSCP(Script(default_association=reject)) as scp:
        run = send(scp, archive, tmp_path, *retries(0))
        associations = scp.association_records()
        assert scp.store_records() == []
    assert run.returncode == 3, run.stderr
    assert associations and all(
        a.rejected == (reject.result, reject.source, reject.reason) for a in associations
    )
    assert_nothing_lost(run.summary, inputs(archive), run.log_dir)
    assert run.summary["counts"]["failed"] == len(archive.files)
    # One ERROR line per association problem, in the standard's words (PS3.8 9.3.4).
    errors = [ln for ln in run.stderr.splitlines() if ln.startswith("ERROR ")]
    assert errors, run.stderr
    for word in words:
        assert word in errors[0], errors[0]
        assert all(word in f["reason"] for f in run.summary["failures"])
    assert run.summary["associations"]["rejected"] == len(associations)
    assert run.summary["associations"]["opened"] == 0


# --------------------------------------------------------------------------
# The association breaks in the middle of a data set


def test_a_abort_in_the_middle_of_a_data_set_fails_that_file_only(
    archive: SynthArchive, tmp_path: Path
) -> None:
    with HostileSCP(Script(stores={2: AbortMidDataset(after_bytes=2000)})) as scp:
        run = send(scp, archive, tmp_path, *retries(0))
        [faulted_store] = [s for s in scp.store_records() if s.fault]
        associations = scp.association_records()
    assert faulted_store.fault == "A-ABORT" and faulted_store.mid_dataset
    assert run.returncode == 1, run.stderr
    faulted = path_of(archive, faulted_store.sop_instance_uid)
    line = run.stderr_line("FAILED", faulted)
    assert "aborted by the DICOM UL service-user" in line  # A-ABORT source 0 (PS3.8 9.3.8)
    assert run.failure(faulted)["status"] is None  # no DIMSE status: nothing answered
    assert_others_stored(run, scp, archive, faulted)
    # The next file opened a new association.
    assert associations[faulted_store.association].aborted_by_us
    assert any(a.number > faulted_store.association and a.accepted for a in associations)
    assert run.summary["associations"]["aborted"] >= 1


def test_connection_reset_in_the_middle_of_a_data_set_fails_that_file_only(
    archive: SynthArchive, tmp_path: Path
) -> None:
    with HostileSCP(Script(stores={1: ResetMidDataset(after_bytes=2000)})) as scp:
        run = send(scp, archive, tmp_path, *retries(0))
        [faulted_store] = [s for s in scp.store_records() if s.fault]
        associations = scp.association_records()
    assert faulted_store.fault == "reset" and faulted_store.mid_dataset
    assert run.returncode == 1, run.stderr
    faulted = path_of(archive, faulted_store.sop_instance_uid)
    line = run.stderr_line("FAILED", faulted)
    assert "association lost while sending" in line
    assert "reset" in line.lower() or "broke" in line, line
    assert_others_stored(run, scp, archive, faulted)
    assert associations[faulted_store.association].reset_by_us
    assert any(a.number > faulted_store.association and a.accepted for a in associations)


# --------------------------------------------------------------------------
# The SCP stops answering: the DIMSE timeout must end the wait


def test_no_c_store_rsp_fires_the_dimse_timeout_and_the_run_goes_on(
    archive: SynthArchive, tmp_path: Path
) -> None:
    with HostileSCP(Script(stores={1: NoResponse()})) as scp:
        run = send(scp, archive, tmp_path, *retries(0))
        [faulted_store] = [s for s in scp.store_records() if s.fault]
        silent = scp.association_records()[faulted_store.association]
    assert faulted_store.complete  # the whole data set arrived; only the answer is missing
    assert run.returncode == 1, run.stderr
    assert 2.0 <= run.seconds < QUICK, f"{run.seconds:.1f} s for a 2 s DIMSE timeout"
    faulted = path_of(archive, faulted_store.sop_instance_uid)
    line = run.stderr_line("FAILED", faulted)
    assert "no C-STORE-RSP" in line and "within 2 s" in line, line
    # PS3.8 9.3.8: the sender gives up with an A-ABORT, not by just closing.
    assert silent.aborted_by_peer is not None, silent
    assert_others_stored(run, scp, archive, faulted)


def test_each_outcome_is_journalled_while_the_next_c_store_waits(
    archive: SynthArchive, tmp_path: Path
) -> None:
    """A worker journals the outcomes it has queued while the next C-STORE waits for a
    slow response (scu.IDLE_AFTER), not after it: killed then, the journal holds every
    answered file but none other."""
    import sqlite3

    log_dir = tmp_path / "logs"
    with HostileSCP(Script(stores={2: NoResponse()})) as scp:
        command = [
            sys.executable, "-m", "dicom_fastsend", "send", "-i", str(archive.root), "-r",
            "-a", scp.ae_title, "-H", "127.0.0.1", "-p", str(scp.port), "--log-dir",
            str(log_dir), "--no-progress", "-P", "1", "--dimse-timeout", "120",
        ]  # fmt: skip
        process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
        )
        try:
            answered: set[str] = set()
            journalled: set[str] = set()

            def journal_caught_up() -> bool:
                nonlocal answered, journalled
                if not any(s.fault and s.complete for s in scp.store_records()):
                    return False
                answered = {s.sop_instance_uid for s in scp.store_records() if s.status == 0}
                for journal in log_dir.glob("fastsend_journal_*.sqlite"):
                    db = sqlite3.connect(journal)
                    try:
                        rows = db.execute(
                            "SELECT sop_instance_uid FROM files WHERE state = 'stored'"
                        )
                        journalled = {uid for (uid,) in rows}
                    finally:
                        db.close()
                return bool(answered) and journalled == answered

            # Until the unanswered C-STORE has arrived whole and every answered
            # one is in the journal; with the outcomes held until the next
            # response, this waits out the deadline (the peer never answers).
            wait_until(
                journal_caught_up,
                QUICK,
                "every answered C-STORE to be in the journal",
                state=lambda: f"answered {sorted(answered)}, journalled {sorted(journalled)}",
            )
            # The third of the first study: the second one's outcome is the one held.
            assert len(answered) == 2, answered
        finally:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate(timeout=10)


def test_a_trickled_never_ending_response_still_fires_the_dimse_timeout(
    archive: SynthArchive, tmp_path: Path
) -> None:
    # One byte of a never-finished P-DATA-TF every 0.3 s. The hostile SCP gives
    # up after 5 s of this (idle_timeout), which bounds the run either way.
    with HostileSCP(Script(stores={0: Trickle(interval=0.3)}), idle_timeout=5) as scp:
        run = send(scp, archive, tmp_path, *retries(0), "--dimse-timeout", "1")
        [faulted_store] = [s for s in scp.store_records() if s.fault]
    faulted = path_of(archive, faulted_store.sop_instance_uid)
    assert "no C-STORE-RSP" in run.stderr_line("FAILED", faulted)
    assert run.seconds < 4.0, f"{run.seconds:.1f} s for a 1 s DIMSE timeout"


# --------------------------------------------------------------------------
# A failure or warning status on one instance (PS3.7 C, PS3.4 B.2.3)


@pytest.mark.parametrize(
    ("status", "text", "exit_code"),
    [
        (0xA700, "0xA700 Refused: Out of Resources", 1),
        (0xC000, "0xC000 Error: Cannot understand", 1),
        (0xB000, "0xB000 Warning: Coercion of Data Elements", 0),
    ],
    ids=["A700", "C000", "B000-warning"],
)
def test_status_on_one_instance_is_reported_for_that_file(
    archive: SynthArchive, tmp_path: Path, status: int, text: str, exit_code: int
) -> None:
    script = Script(stores={3: Respond(status=status, error_comment="hostile says no")})
    with HostileSCP(script) as scp:
        run = send(scp, archive, tmp_path, *retries(0))
        chosen = scp.store_records()[3]
    assert run.returncode == exit_code, run.stderr
    faulted = path_of(archive, chosen.sop_instance_uid)
    stored = assert_nothing_lost(run.summary, inputs(archive), run.log_dir)
    assert stored == set(inputs(archive)) - {faulted}
    expected_status = f"0x{status:04X}"
    if exit_code == 0:  # a warning: stored, and said so
        [warning] = run.summary["warnings"]
        assert (warning["path"], warning["status"]) == (faulted, expected_status)
        line = run.stderr_line("WARNING", faulted)
    else:
        failure = run.failure(faulted)
        assert failure["status"] == expected_status
        assert failure["reason"].startswith(text)
        line = run.stderr_line("FAILED", faulted)
    assert text in line and "hostile says no" in line, line  # the Error Comment too
    # One association throughout: a status is no reason to drop it.
    assert [a.accepted for a in scp.association_records()] == [True]
    assert len(scp.store_records()) == len(archive.files)


# --------------------------------------------------------------------------
# The SCP restarts in the middle of a run


def test_scp_restart_loses_only_the_file_in_flight_and_the_rest_is_sent(
    archive: SynthArchive, tmp_path: Path
) -> None:
    # down_for=0: listening again before the old connection drops, like a
    # supervisor restarting the SCP at once. The file sent into the dying
    # connection fails; the next one opens a new association.
    scp = HostileSCP()
    scp.restart(after_stores=2, down_for=0)
    with scp:
        # One process: one association at a time, so one file is in flight.
        run = send(scp, archive, tmp_path, *retries(0), "-P", "1")
        associations = scp.association_records()
    assert len(scp.restarts) == 1
    assert associations[0].dropped_by_restart
    assert len(associations) >= 2 and associations[-1].accepted and associations[-1].released
    assert run.returncode == 1, run.stderr
    [failure] = run.summary["failures"]
    assert "association lost while sending" in run.stderr_line("FAILED", failure["path"])
    assert failure["sop_instance_uid"] not in scp.stored_uids()
    assert_others_stored(run, scp, archive, failure["path"])


def test_scp_down_without_retries_fails_the_rest_quickly_and_says_refused(
    archive: SynthArchive, tmp_path: Path
) -> None:
    scp = HostileSCP()
    scp.restart(after_stores=2, down_for=3.0)
    with scp:
        # One process, so exactly one file is in flight when the SCP goes down.
        run = send(scp, archive, tmp_path, *retries(0), "-P", "1")
        received = scp.stored_uids()
    assert run.seconds < 3.0 + QUICK / 2
    assert run.returncode == 1, run.stderr  # an association was made: not exit 3
    stored = assert_nothing_lost(run.summary, inputs(archive), run.log_dir)
    assert len(received) == 2 and {archive.sop_instance_uids[Path(p)] for p in stored} == set(
        received
    )
    failures = run.summary["failures"]
    assert len(failures) == len(archive.files) - 2
    # The file in flight was lost with the association; every later batch
    # tries the association once (no retries) and is refused, naming the peer.
    lost = [f for f in failures if f["reason"].startswith("association lost")]
    refused = [f for f in failures if "Connection refused" in f["reason"]]
    assert len(lost) == 1 and len(refused) == len(failures) - 1, failures
    assert all(f["attempts"] <= 1 for f in failures), failures
    peer = f"127.0.0.1:{scp.port}"
    assert all(peer in f["reason"] for f in failures), failures
    assert "Connection refused" in run.stderr and "ERROR " in run.stderr


# --------------------------------------------------------------------------
# Malformed PDUs instead of the C-STORE-RSP (PS3.8 9.3, Table 9-10 Evt19)


@pytest.mark.parametrize(
    ("kind", "words", "abort", "implementation"),
    [
        # Evt19 -> AA-8: A-ABORT from the service-provider (source 2, PS3.8 9.3.8),
        # reason 1 unrecognized-PDU or 6 invalid-PDU-parameter value.
        pytest.param(
            "unknown-pdu-type", "unknown PDU type 0x09", (2, 1), "cython", id="unknown-pdu-type"
        ),
        pytest.param(
            "huge-length", "2147483647 bytes, beyond the limit", (2, 6), "cython", id="huge-length"
        ),
        # EOF inside a PDU: Evt17 -> AA-4, nothing left to abort.
        pytest.param("truncated", "closed the connection", None, "cython", id="truncated"),
        # 'H' of 'HTTP/1.1' read as a PDU type.
        pytest.param("garbage", "unknown PDU type 0x48", (2, 1), "cython", id="garbage"),
        pytest.param("bad-pdv", "PDV item", (2, 6), "cython", id="bad-pdv"),
        # The pure-Python parse_pdvs must refuse it the same way.
        pytest.param("bad-pdv", "PDV item", (2, 6), "python", id="bad-pdv-pure-python"),
        # Well framed, but no command set inside: the DIMSE user aborts (source 0).
        pytest.param("bad-command", "invalid DIMSE message", (0, 0), "cython", id="bad-command"),
    ],
)
def test_malformed_pdu_is_a_clear_protocol_error_without_hang_or_traceback(
    archive: SynthArchive,
    tmp_path: Path,
    kind: MalformedKind,
    words: str,
    abort: tuple[int, int] | None,
    implementation: str,
) -> None:
    with HostileSCP(Script(stores={1: Malformed(kind)})) as scp:
        run = send(scp, archive, tmp_path, *retries(0), implementation=implementation)
        [faulted_store] = [s for s in scp.store_records() if s.fault]
        association = scp.association_records()[faulted_store.association]
    assert faulted_store.fault == kind
    assert run.returncode == 1, run.stderr
    assert run.seconds < 2.0 + QUICK / 2, "a malformed PDU must not wait for a timeout"
    faulted = path_of(archive, faulted_store.sop_instance_uid)
    line = run.stderr_line("FAILED", faulted)
    assert "association lost while sending" in line and words in line, line
    assert association.aborted_by_peer == abort, association
    assert_others_stored(run, scp, archive, faulted)


# --------------------------------------------------------------------------
# With retries: transient faults end with everything stored


def _retried_everything(run: Run, scp: HostileSCP, archive: SynthArchive) -> None:
    assert run.returncode == 0, run.stderr
    stored = assert_nothing_lost(run.summary, inputs(archive), run.log_dir)
    assert stored == set(inputs(archive))
    assert Counter(scp.stored_uids()) == Counter(archive.uids)  # each exactly once


def _retry_logged(run: Run, path: str) -> None:
    """The failed attempt is in the session log, beside the final "stored" line."""
    mentions = [m for m in run.log() if path in m and not m.startswith(f"stored {path} ")]
    assert mentions, f"the failed attempt on {path} is not in the session log"


def test_retry_after_a_abort_mid_data_set_stores_everything(
    archive: SynthArchive, tmp_path: Path
) -> None:
    with HostileSCP(Script(stores={2: AbortMidDataset(after_bytes=2000)})) as scp:
        run = send(scp, archive, tmp_path, *retries(3))
        records = scp.store_records()
    _retried_everything(run, scp, archive)
    faulted_uid = records[2].sop_instance_uid
    # The aborted attempt, then the retry on a new association.
    attempts = [r for r in records if r.sop_instance_uid == faulted_uid]
    assert [r.fault for r in attempts] == ["A-ABORT", ""]
    assert attempts[1].association > attempts[0].association
    _retry_logged(run, path_of(archive, faulted_uid))


def test_retry_after_a_transient_rejection_stores_everything(
    archive: SynthArchive, tmp_path: Path
) -> None:
    script = Script(associations={0: Reject(result=2, source=3, reason=1)})
    with HostileSCP(script) as scp:
        run = send(scp, archive, tmp_path, *retries(3))
        associations = scp.association_records()
    _retried_everything(run, scp, archive)
    assert associations[0].rejected == (2, 3, 1) and associations[1].accepted


def test_retry_after_a700_stores_everything(archive: SynthArchive, tmp_path: Path) -> None:
    with HostileSCP(Script(stores={1: Respond(status=0xA700)})) as scp:
        run = send(scp, archive, tmp_path, *retries(3))
        records = scp.store_records()
    _retried_everything(run, scp, archive)
    uid = records[1].sop_instance_uid
    assert [r.status for r in records if r.sop_instance_uid == uid] == [0xA700, 0x0000]
    _retry_logged(run, path_of(archive, uid))


def test_retry_after_a_dimse_timeout_stores_everything(
    archive: SynthArchive, tmp_path: Path
) -> None:
    with HostileSCP(Script(stores={0: NoResponse()})) as scp:
        run = send(scp, archive, tmp_path, *retries(3), "--dimse-timeout", "1")
        records = scp.store_records()
    _retried_everything(run, scp, archive)
    uid = records[0].sop_instance_uid
    assert [r.fault for r in records if r.sop_instance_uid == uid] == ["no response", ""]


def test_retry_rides_out_an_scp_restart(archive: SynthArchive, tmp_path: Path) -> None:
    # Down for 0.5 s; retries after 0.1, 0.2, 0.4, 0.8 s add up to more than that.
    scp = HostileSCP()
    scp.restart(after_stores=2, down_for=0.5)
    with scp:
        run = send(scp, archive, tmp_path, *retries(4))
    assert len(scp.restarts) == 1
    _retried_everything(run, scp, archive)


def test_permanent_failures_are_not_retried(archive: SynthArchive, tmp_path: Path) -> None:
    # 0xC000 (Cannot understand) will not pass on a second try.
    with HostileSCP(Script(stores={1: Respond(status=0xC000)})) as scp:
        run = send(scp, archive, tmp_path / "status", *retries(3))
        records = scp.store_records()
    assert run.returncode == 1, run.stderr
    uid = records[1].sop_instance_uid
    assert [r.status for r in records if r.sop_instance_uid == uid] == [0xC000]
    assert run.failure(path_of(archive, uid))["attempts"] == 1
    assert_others_stored(run, scp, archive, path_of(archive, uid))

    # A permanent rejection: as many association attempts with retries as without.
    attempts = []
    for count in (0, 3):
        with HostileSCP(Script(default_association=Reject(1, 1, 7))) as scp:
            run = send(scp, archive, tmp_path / f"reject{count}", *retries(count))
            attempts.append(len(scp.association_records()))
        assert run.returncode == 3, run.stderr
    assert attempts[0] == attempts[1], attempts
