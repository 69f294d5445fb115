"""Sessions: `send` runs the coordinator with its log and summary; `echo` checks a peer.

This is also the Python API behind the CLI: both take the same config objects.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from .config import PeerConfig, SendConfig, destination_key
from .engine.coordinator import Coordinator, Hooks
from .engine.results import CommitmentCounts, FileResult, Outcome, SendSummary
from .engine.scu import AssociationError, Response, StoreClient
from .engine.worker import describe_association_error
from .io.transport import TransportError
from .protocol.hotpath import IMPLEMENTATION
from .protocol.pdu import PresentationContextRQ
from .protocol.uids import IMPLICIT_VR_LITTLE_ENDIAN, VERIFICATION_SOP_CLASS, describe
from .report import ProgressBar, SessionLog, summary_dict, write_failures, write_summary


def new_session_id() -> str:
    """Sortable by time, unique across concurrent runs."""
    # os.urandom, not secrets: secrets imports hmac and OpenSSL's hashes (~6 ms).
    return time.strftime("%Y%m%d_%H%M%S") + "_" + os.urandom(3).hex()


def session_paths(log_dir: Path, session_id: str) -> tuple[Path, Path, Path]:
    """(session log, JSON summary, failures CSV) for a session."""
    return (
        log_dir / f"fastsend_{session_id}.log",
        log_dir / f"fastsend_summary_{session_id}.json",
        log_dir / f"fastsend_failures_{session_id}.csv",
    )


def send(
    config: SendConfig,
    report: Callable[[FileResult], None] = lambda result: None,
    progress: ProgressBar | None = None,
) -> SendSummary:
    """Send everything under the configured inputs; never raises for a bad file.

    Writes the session log, the JSON summary and (if anything failed) the
    failures CSV under ``config.log_dir`` unless it is None, also when
    interrupted; the coordinator and the workers write the journal (the
    inventory, ``config.journal``).
    """
    summary = SendSummary(session_id=new_session_id())
    log_path = summary_path = failures_path = None
    if config.log_dir is not None:
        log_path, summary_path, failures_path = session_paths(config.log_dir, summary.session_id)
    log = SessionLog(log_path)
    progress = progress or ProgressBar(enabled=False)
    log.write(
        "info",
        f"session {summary.session_id}: fastsend to {config.peer.called_ae_title}@"
        f"{config.peer.host}:{config.peer.port} from {', '.join(map(str, config.inputs))}"
        + (
            f" on the Dask cluster {config.cluster}"
            if config.cluster
            else f" with {config.processes} process(es)"
        )
        + f", hot path {IMPLEMENTATION}",
    )

    def on_result(result: FileResult) -> None:
        log.result(result)
        report(result)

    hooks = Hooks(
        result=on_result,
        log=log.write,
        progress=progress.update,
        found=progress.grow,
        already_stored=progress.advance,
    )
    try:
        Coordinator(config, hooks, summary).run()
        if config.commit is not None and not summary.interrupted:
            summary.commitment = commit_session(config, summary.session_id, log.write)
    finally:
        progress.close()
        if summary.finished == 0.0:
            summary.finished = time.time()
        # The audit report first, so that the summary names it.
        if config.log_dir is not None:
            _audit(config, config.log_dir, summary, log)
        if summary_path is not None:
            write_summary(summary_path, summary_dict(summary, config, IMPLEMENTATION))
            log.write("info", f"summary written to {summary_path}")
        if failures_path is not None and summary.count(Outcome.FAILED):
            write_failures(failures_path, summary)
        counts = ", ".join(f"{outcome.value} {summary.count(outcome)}" for outcome in Outcome)
        log.write(
            "info", f"session {summary.session_id} finished: {counts}, exit {summary.exit_code}"
        )
        log.close()
    return summary


def _audit(config: SendConfig, log_dir: Path, summary: SendSummary, log: SessionLog) -> None:
    """The audit report of the whole inventory, beside the session's log; a report that
    cannot be written is logged, and changes nothing of the run's outcome.

    When nothing the inventory records has changed since the report a send
    wrote last (a rerun that found everything stored), that report still
    holds: it is named, not written again (report_that_holds).
    """
    journal = config.journal
    if journal is None or not journal.exists():
        return  # the run stopped before it opened a journal
    import sqlite3

    from .audit import remember_report, report_that_holds, write_audit
    from .engine.inventory import JournalError

    try:
        held = report_that_holds(journal, log_dir)
        if held is not None:
            summary.audit_report = Path(held.html)
            summary.audit_unchanged_since = held.session_id
            log.write(
                "info",
                f"audit report {held.html} (and its .csv, .json) still holds: nothing the"
                f" journal records has changed since session {held.session_id} wrote it;"
                " `fastsend audit` writes a new one",
            )
            return
        written = write_audit(journal, log_dir, summary.session_id)
    except (JournalError, OSError) as exc:
        log.write("warning", f"no audit report written: {exc}")
        return
    summary.audit_report = written.html
    log.write("info", f"audit report written to {written.html}, {written.csv}, {written.json}")
    try:
        remember_report(journal, written)
    except sqlite3.Error as exc:
        # The report is written; only the next rerun cannot know that it still holds.
        log.write("warning", f"cannot note the audit report in the journal {journal}: {exc}")


def commit_session(
    config: SendConfig, session_id: str, log: Callable[[str, str], None]
) -> CommitmentCounts:
    """send --commit: Storage Commitment of what this session stored, recorded in the journal."""
    from .engine.inventory import CommitState, Inventory, JournalError
    from .engine.verify import VerifyError, request_commitment

    assert config.commit is not None
    counts = CommitmentCounts()
    if config.journal is None:
        counts.problems.append(
            "--commit needs the journal, which records what was stored: drop --log-dir '' "
            "or give --journal"
        )
        return counts
    try:
        inventory = Inventory(config.journal, destination_key(config.peer), session_id)
    except JournalError as exc:
        counts.problems.append(str(exc))
        return counts
    try:
        instances = list(inventory.held_instances(session_id))
        counts.requested = len(instances)
        if not instances:
            return counts
        log("info", f"Storage Commitment of {len(instances)} instance(s) stored this session")
        try:
            outcome = request_commitment(config.peer, config.commit, instances, log)
        except VerifyError as exc:
            counts.problems.append(str(exc))
            log("error", str(exc))
            counts.uncommitted = counts.requested
            return counts
        inventory.record_commit(
            (path, state, reason) for path, (state, reason) in outcome.states.items()
        )
        tally = outcome.counts()
        counts.committed = tally[CommitState.COMMITTED.value]
        counts.commit_failed = tally[CommitState.COMMIT_FAILED.value]
        counts.uncommitted = tally[CommitState.UNCOMMITTED.value]
        counts.transactions = outcome.transactions
        counts.problems.extend(outcome.problems)
        for problem in outcome.problems:
            log("error", problem)
        for path, (state, reason) in outcome.states.items():
            if state is CommitState.COMMIT_FAILED:
                log("error", f"Storage Commitment failed for {path}: {reason}")
    finally:
        inventory.close()
    return counts


def echo(peer: PeerConfig) -> tuple[Response | None, str]:
    """C-ECHO: (response, '') or (None, what went wrong)."""
    client = StoreClient(peer)
    contexts = (PresentationContextRQ(1, VERIFICATION_SOP_CLASS, (IMPLICIT_VR_LITTLE_ENDIAN,)),)
    try:
        accepted = client.open(contexts)
        if not accepted.accepted_count:
            client.release()
            return None, f"{client.name} did not accept {describe(VERIFICATION_SOP_CLASS)}"
        response = client.echo()
        client.release()
        return response, ""
    except (AssociationError, TransportError) as exc:
        client.abort()
        return None, describe_association_error(exc, peer)
