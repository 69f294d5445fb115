"""`fastsend verify` and `send --commit` against real peers on loopback.

- Orthanc: Storage Commitment SCP (it reports on an association of its own to
  the modality registered in DicomModalities: our listener) and C-FIND SCP;
  instances are deleted through its REST API to make them missing.
- DCMTK dcmqrscp: C-FIND SCP (Study Root) that does not do Storage Commitment.
- pynetdicom: Storage Commitment SCPs that commit some instances and refuse
  others (Failed SOP Sequence), report on the same association or on a new
  one, report an unknown transaction, or never report.
"""

from __future__ import annotations

import csv
import json
import sqlite3
import subprocess
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from dicom_fastsend.protocol.hotpath import MAX_NESTING_DEPTH
from fastsend_cli import Run, fastsend
from peers import (
    LOOPBACK,
    Orthanc,
    PeerStartError,
    SynthArchive,
    _terminate,
    _wait_for_ports,
    free_port,
    require_dcmtk,
)
from require import require_module
from waiting import wait_until

STORAGE_COMMITMENT = "1.2.840.10008.1.20.1"
STORAGE_COMMITMENT_INSTANCE = "1.2.840.10008.1.20.1.1"
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
SCHEMA = Path(__file__).parents[1] / "src" / "dicom_fastsend" / "summary.schema.json"


def _destination(ae: str, port: int) -> list[str]:
    return ["-a", ae, "-H", LOOPBACK, "-p", str(port)]


def _send(ae: str, port: int, logs: Path, *args: str) -> Run:
    run = fastsend("send", *_destination(ae, port), "--log-dir", str(logs), "--no-progress", *args)
    return run


def _verify(ae: str, port: int, logs: Path, *args: str, timeout: float = 180.0) -> Run:
    return fastsend(
        "verify", *_destination(ae, port), "--log-dir", str(logs), *args, timeout=timeout
    )


def _journal_rows(logs: Path) -> dict[str, tuple[Any, ...]]:
    """path -> (sop_instance_uid, commit_state, commit_reason, find_state, held_size)."""
    (journal,) = logs.glob("fastsend_journal_*.sqlite")
    with sqlite3.connect(journal) as db:
        rows = db.execute(
            "SELECT dir, name, sop_instance_uid, commit_state, commit_reason, find_state,"
            " held_size FROM files"
        ).fetchall()
    return {str(Path(d) / n): tuple(rest) for d, n, *rest in rows}


def _missing_csv(logs: Path) -> list[dict[str, str]]:
    listed = sorted(logs.glob("fastsend_missing_*.csv"), key=lambda p: p.stat().st_mtime)
    assert listed, f"no fastsend_missing_*.csv in {logs}"
    with listed[-1].open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


# ------------------------------------------------------------------ Orthanc


@pytest.fixture
def orthanc_committing(orthanc_factory: Callable[..., Orthanc]) -> tuple[Orthanc, int]:
    """Orthanc with fastsend (AE FASTSEND) registered where it sends commitment reports."""
    commit_port = free_port()
    peer = orthanc_factory(
        config_overrides={"DicomModalities": {"fastsend": ["FASTSEND", LOOPBACK, commit_port]}}
    )
    return peer, commit_port


def test_orthanc_verify_delete_resend_verify(
    orthanc_committing: tuple[Orthanc, int], archive: SynthArchive, tmp_path: Path
) -> None:
    """The issue's acceptance: deleted instances are exactly the missing ones, resent, clean."""
    orthanc, commit_port = orthanc_committing
    logs = tmp_path / "logs"
    commit = [
        "--commit-port",
        str(commit_port),
        "--commit-bind",
        LOOPBACK,
        "--commit-timeout",
        "30",
    ]
    sent = _send("ORTHANC", orthanc.dicom_port, logs, "-r", "-i", str(archive.root))
    assert sent.returncode == 0, sent.output

    clean = _verify("ORTHANC", orthanc.dicom_port, logs, "--find", "--commit", *commit)
    assert clean.returncode == 0, clean.output
    total = len(archive.files)
    assert f"C-FIND: {total} found, 0 missing at destination (4 STUDY queries)" in clean.stdout
    assert f"Storage Commitment: {total} committed, 0 commit failed, 0 uncommitted" in clean.stdout
    rows = _journal_rows(logs)
    assert {r[1] for r in rows.values()} == {"committed"}
    assert {r[3] for r in rows.values()} == {"found"}
    assert not list(logs.glob("fastsend_missing_*.csv"))

    # Two instances of one study, one of another, deleted at the destination.
    by_study: dict[str, list[Path]] = {}
    for path in archive.files:
        by_study.setdefault(archive.study_uids[path], []).append(path)
    studies = sorted(by_study.values(), key=lambda paths: str(paths[0]))
    deleted = [studies[0][0], studies[0][1], studies[2][2]]
    for path in deleted:
        orthanc.rest("DELETE", f"/instances/{orthanc.orthanc_id(archive.sop_instance_uids[path])}")

    found = _verify("ORTHANC", orthanc.dicom_port, logs, "--find", "--commit", *commit)
    assert found.returncode == 1, found.output
    assert f"C-FIND: {total - 3} found, 3 missing at destination" in found.stdout
    # Orthanc refuses to commit what it does not hold: No such object instance (PS3.3 C.14.1.1).
    assert f"Storage Commitment: {total - 3} committed, 3 commit failed" in found.stdout
    listed = _missing_csv(logs)
    assert sorted(row["path"] for row in listed) == sorted(str(p) for p in deleted)
    assert all("missing at destination (C-FIND)" in row["reason"] for row in listed)
    assert all("0x0112 No such object instance" in row["reason"] for row in listed)
    rows = _journal_rows(logs)
    for path in archive.files:
        uid, commit_state, reason, find_state, held = rows[str(path)]
        if path in deleted:
            assert (commit_state, reason, find_state, held) == (
                "commit_failed",
                "0x0112 No such object instance",
                "missing",
                None,
            )
        else:
            assert (commit_state, find_state) == ("committed", "found")
            assert held is not None

    csv_path = sorted(logs.glob("fastsend_missing_*.csv"))[-1]
    resent = _send("ORTHANC", orthanc.dicom_port, logs, "--input-list", str(csv_path))
    assert resent.returncode == 0, resent.output
    assert "3 files: 3 stored" in resent.stderr, resent.output
    assert orthanc.sop_instance_uids() == archive.uids

    again = _verify("ORTHANC", orthanc.dicom_port, logs, *commit)  # neither flag: both methods
    assert again.returncode == 0, again.output
    assert f"C-FIND: {total} found, 0 missing" in again.stdout
    assert f"Storage Commitment: {total} committed, 0 commit failed, 0 uncommitted" in again.stdout


def test_send_commit_counts_in_the_summary(
    orthanc_committing: tuple[Orthanc, int], archive: SynthArchive, tmp_path: Path
) -> None:
    orthanc, commit_port = orthanc_committing
    logs = tmp_path / "logs"
    run = _send(
        "ORTHANC", orthanc.dicom_port, logs, "-r", "-i", str(archive.root),
        "--commit", "--commit-port", str(commit_port), "--commit-bind", LOOPBACK,
        "--commit-batch", "5", "--commit-timeout", "30",
    )  # fmt: skip
    assert run.returncode == 0, run.output
    total = len(archive.files)
    assert f"Storage Commitment of {total} instance(s): {total} committed" in run.stderr
    (summary_path,) = logs.glob("fastsend_summary_*.json")
    summary = json.loads(summary_path.read_text())
    jsonschema.validate(summary, json.loads(SCHEMA.read_text()))
    assert summary["commitment"] == {
        "requested": total,
        "committed": total,
        "commit_failed": 0,
        "uncommitted": 0,
        "transactions": 3,  # 12 instances in batches of 5
        "problems": [],
    }
    assert {r[1] for r in _journal_rows(logs).values()} == {"committed"}


def test_orthanc_without_our_listener_leaves_instances_uncommitted(
    orthanc_committing: tuple[Orthanc, int], archive: SynthArchive, tmp_path: Path
) -> None:
    """No --commit-port: Orthanc's report cannot reach us; said so, exit 1, uncommitted."""
    orthanc, _ = orthanc_committing
    logs = tmp_path / "logs"
    assert _send("ORTHANC", orthanc.dicom_port, logs, "-r", "-i", str(archive.root)).returncode == 0
    run = _verify("ORTHANC", orthanc.dicom_port, logs, "--commit", "--commit-timeout", "2")
    assert run.returncode == 1, run.output
    total = len(archive.files)
    assert f"0 committed, 0 commit failed, {total} uncommitted" in run.stdout
    assert "give --commit-port" in run.stdout
    assert {r[1] for r in _journal_rows(logs).values()} == {"uncommitted"}
    assert not list(logs.glob("fastsend_missing_*.csv"))  # nothing known to be missing


# ------------------------------------------------------------------ dcmqrscp


@dataclass
class QRSCP:
    port: int
    aet: str
    process: subprocess.Popen[bytes]

    def stop(self) -> None:
        _terminate(self.process)


@pytest.fixture
def dcmqrscp_factory(tmp_path: Path) -> Iterator[Callable[[Path, int], QRSCP]]:
    """start(database directory, port) -> a dcmqrscp (AE QRSCP) storing into it."""
    binary = require_dcmtk("dcmqrscp")
    started: list[QRSCP] = []

    def start(database: Path, port: int) -> QRSCP:
        database.mkdir(parents=True, exist_ok=True)
        config = database.parent / f"{database.name}.cfg"
        # dcmqrscp.cfg (DCMTK docs/dcmqrcnf.txt): any peer may store and query. It forks
        # per association (its --single-process mode exits after the first one here).
        config.write_text(
            f"NetworkTCPPort = {port}\nMaxPDUSize = 16384\nMaxAssociations = 16\n\n"
            "HostTable BEGIN\nHostTable END\n\nVendorTable BEGIN\nVendorTable END\n\n"
            f"AETable BEGIN\nQRSCP {database} RW (1000, 1024mb) ANY\nAETable END\n"
        )
        command = [binary, "--disable-host-lookup", "-c", str(config)]
        log = database.parent / f"{database.name}.log"
        with log.open("wb") as sink:
            process = subprocess.Popen(
                command, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
            )
        _wait_for_ports(process, [port], name="dcmqrscp", command=command, log=log, timeout=30)
        peer = QRSCP(port, "QRSCP", process)
        started.append(peer)
        return peer

    try:
        yield start
    finally:
        for peer in started:
            peer.stop()


def _start_dcmqrscp(factory: Callable[[Path, int], QRSCP], database: Path) -> QRSCP:
    for _ in range(3):
        try:
            return factory(database, free_port())
        except PeerStartError:
            continue  # the free port was taken meanwhile
    raise AssertionError("dcmqrscp did not start")


def test_dcmqrscp_find_and_no_storage_commitment(
    dcmqrscp_factory: Callable[[Path, int], QRSCP], archive: SynthArchive, tmp_path: Path
) -> None:
    """C-FIND reconciliation runs although the destination rejects Storage Commitment."""
    qr = _start_dcmqrscp(dcmqrscp_factory, tmp_path / "db")
    logs = tmp_path / "logs"
    sent = _send("QRSCP", qr.port, logs, "-r", "-i", str(archive.root))
    assert sent.returncode == 0, sent.output
    run = _verify("QRSCP", qr.port, logs)  # both methods
    total = len(archive.files)
    assert f"C-FIND: {total} found, 0 missing at destination" in run.stdout, run.output
    assert "Storage Commitment: not done" in run.stdout
    assert "does not support Storage Commitment" in run.stdout
    assert run.returncode == 0, run.output  # every instance verified by the method that ran
    rows = _journal_rows(logs)
    assert {r[3] for r in rows.values()} == {"found"}
    assert {r[1] for r in rows.values()} == {None}


def test_dcmqrscp_missing_by_series_and_image_level(
    dcmqrscp_factory: Callable[[Path, int], QRSCP], archive: SynthArchive, tmp_path: Path
) -> None:
    """A destination that lost some instances: the counts differ, so the IMAGE level says which."""
    logs = tmp_path / "logs"
    qr = _start_dcmqrscp(dcmqrscp_factory, tmp_path / "db")
    assert _send("QRSCP", qr.port, logs, "-r", "-i", str(archive.root)).returncode == 0
    port = qr.port
    qr.stop()
    # The same destination (AE, host, port) comes back with an empty database,
    # into which DCMTK's storescu puts all but three instances.
    kept = [p for p in archive.files]
    lost = [kept.pop(0), kept.pop(4), kept.pop(-1)]
    qr = dcmqrscp_factory(tmp_path / "db2", port)
    from peers import run_dcmtk

    run_dcmtk("storescu", "-aec", "QRSCP", LOOPBACK, str(port), *map(str, kept))
    run = _verify("QRSCP", port, logs, "--find")
    assert run.returncode == 1, run.output
    assert f"C-FIND: {len(kept)} found, 3 missing at destination" in run.stdout
    assert sorted(row["path"] for row in _missing_csv(logs)) == sorted(map(str, lost))

    resent = _send(
        "QRSCP", port, logs, "--input-list", str(sorted(logs.glob("fastsend_missing_*.csv"))[-1])
    )
    assert resent.returncode == 0 and "3 files: 3 stored" in resent.stderr, resent.output
    again = _verify("QRSCP", port, logs, "--find")
    assert again.returncode == 0, again.output
    assert f"C-FIND: {len(archive.files)} found, 0 missing" in again.stdout


# ------------------------------------------------------------------ pynetdicom SCPs


@dataclass
class CommitmentSCP:
    """A pynetdicom Storage SCP that is also a Storage Commitment SCP, with a script.

    ``refuse``: SOP Instance UIDs reported in the Failed SOP Sequence
    (Failure Reason 0x0112); ``mode``: "same" (report on the requestor's
    association), "new" (open one to ``report_port`` as the SCP role), or
    "never". ``stray``: also report a Transaction UID never asked about, and
    keep the status we were answered in ``stray_status``. ``prelude``: reports
    sent first, each (kind, Event Type ID, Affected SOP Instance UID): kind
    "nested" is Event Information of sequences nested 1500 deep, "escape" one
    with control characters in its Transaction UID, "context" the real report
    on a presentation context never accepted, "valid" the real report; the
    statuses we were answered go to ``prelude_status``.
    """

    mode: str = "same"
    refuse: set[str] = field(default_factory=set)
    report_port: int = 0
    report_ae: str = "FASTSEND"
    stray: bool = False
    stray_status: list[int] = field(default_factory=list)
    report_status: list[int] = field(default_factory=list)
    prelude: list[tuple[str, int, str]] = field(default_factory=list)
    prelude_status: list[int] = field(default_factory=list)
    # "new": whether our listener agreed that the reporting requestor is the
    # SCP (SCP/SCU Role Selection, PS3.7 D.3.3.4), per association.
    agreed_scp_role: list[bool] = field(default_factory=list)
    # One report at a time: each N-ACTION starts a thread that reports, and
    # pynetdicom matches a response to whichever thread waits on the
    # association first, so overlapping reports could take each other's
    # N-EVENT-REPORT-RSP (a real SCP reports one after the other too).
    _reporting: threading.Lock = field(default_factory=threading.Lock, repr=False)
    # commitment False: a plain Storage SCP (neither Storage Commitment nor C-FIND).
    commitment: bool = True
    # find: also a Study Root C-FIND SCP answering from ``held`` (SOP Instance UID ->
    # (Study, Series Instance UID)), which C-STORE fills; a test may drop from it.
    find: bool = False
    held: dict[str, tuple[str, str]] = field(default_factory=dict)
    # find_nested: STUDY matches also carry a private UN element of undefined length
    # holding sequences nested 1500 deep (PS3.5 6.2.2: Implicit VR LE inside).
    find_nested: bool = False
    port: int = 0
    _server: Any = None

    def start(self) -> CommitmentSCP:
        from pynetdicom import AE, AllStoragePresentationContexts, evt

        ae = AE(ae_title="PYCOMMIT")
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax)
        if self.commitment:
            ae.add_supported_context(STORAGE_COMMITMENT)
        if self.find:
            ae.add_supported_context(STUDY_ROOT_FIND)
        self._server = ae.start_server(
            (LOOPBACK, 0),
            block=False,
            evt_handlers=[
                (evt.EVT_C_STORE, self._on_store),
                (evt.EVT_N_ACTION, self._on_action),
                (evt.EVT_C_FIND, self._on_find),
            ],
        )
        self.port = int(self._server.server_address[1])
        return self

    def _on_store(self, event: Any) -> int:
        ds = event.dataset
        self.held[str(ds.SOPInstanceUID)] = (str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID))
        return 0x0000

    @staticmethod
    def _add_nested(ds: Any) -> None:
        import struct

        from pydicom.dataelem import DataElement

        item = struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
        value = item + _nested(1500, implicit=True) + struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
        ds[0x00090010] = DataElement(0x00090010, "LO", "FASTSEND TEST")
        ds[0x00091010] = DataElement(0x00091010, "UN", value, is_undefined_length=True)

    def _on_find(self, event: Any) -> Iterator[tuple[int, Any]]:
        """Study Root C-FIND (PS3.4 C.6.2) over ``held``: the keys verification asks for."""
        from pydicom.dataset import Dataset

        query = event.identifier
        level, study = str(query.QueryRetrieveLevel), str(query.StudyInstanceUID)
        in_study = {uid: series for uid, (s, series) in dict(self.held).items() if s == study}
        answers = []
        if level == "STUDY" and in_study:
            answers.append({"NumberOfStudyRelatedInstances": len(in_study)})
        elif level == "SERIES":
            for series in sorted(set(in_study.values())):
                count = sum(1 for s in in_study.values() if s == series)
                answers.append(
                    {"SeriesInstanceUID": series, "NumberOfSeriesRelatedInstances": count}
                )
        elif level == "IMAGE":
            wanted = str(query.SeriesInstanceUID)
            for uid, series in sorted(in_study.items()):
                if series == wanted:
                    answers.append({"SeriesInstanceUID": series, "SOPInstanceUID": uid})
        for values in answers:
            ds = Dataset()
            ds.QueryRetrieveLevel = level
            ds.StudyInstanceUID = study
            for keyword, value in values.items():
                setattr(ds, keyword, value)
            if self.find_nested and level == "STUDY":
                self._add_nested(ds)
            yield 0xFF00, ds
        yield 0x0000, None

    def _on_action(self, event: Any) -> tuple[int, None]:
        request = event.action_information
        transaction = str(request.TransactionUID)
        items = [
            (str(i.ReferencedSOPClassUID), str(i.ReferencedSOPInstanceUID))
            for i in request.ReferencedSOPSequence
        ]
        if self.mode != "never":
            threading.Thread(
                target=self._report, args=(event.assoc, transaction, items), daemon=True
            ).start()
        return 0x0000, None

    def _event_information(self, transaction: str, items: list[tuple[str, str]]) -> Any:
        from pydicom.dataset import Dataset

        ds = Dataset()
        ds.TransactionUID = transaction
        committed, failed = [], []
        for sop_class, sop_instance in items:
            item = Dataset()
            item.ReferencedSOPClassUID = sop_class
            item.ReferencedSOPInstanceUID = sop_instance
            if sop_instance in self.refuse:
                item.FailureReason = 0x0112
                failed.append(item)
            else:
                committed.append(item)
        if committed:
            ds.ReferencedSOPSequence = committed
        if failed:
            ds.FailedSOPSequence = failed
        return ds, (2 if failed else 1)

    def _report(self, assoc: Any, transaction: str, items: list[tuple[str, str]]) -> None:
        time.sleep(0.3)  # after our N-ACTION-RSP went
        with self._reporting:
            self._report_now(assoc, transaction, items)

    def _report_now(self, assoc: Any, transaction: str, items: list[tuple[str, str]]) -> None:
        if self.mode == "same":
            self._send_reports(assoc, transaction, items)
            return
        from pynetdicom import AE, build_role

        ae = AE(ae_title="PYCOMMIT")
        ae.add_requested_context(STORAGE_COMMITMENT)
        role = build_role(STORAGE_COMMITMENT, scp_role=True)
        report = ae.associate(LOOPBACK, self.report_port, ae_title=self.report_ae, ext_neg=[role])
        if report.is_established:
            self.agreed_scp_role.append(bool(report.accepted_contexts[0].as_scp))
            self._send_reports(report, transaction, items)
            report.release()

    def _send_reports(self, assoc: Any, transaction: str, items: list[tuple[str, str]]) -> None:
        for kind, event_type, sop_instance in self.prelude:
            self.prelude_status.append(
                _send_raw_report(assoc, kind, event_type, sop_instance, self, transaction, items)
            )
        if not assoc.is_established:
            return  # the requestor aborted it (kind "context")
        if self.stray:
            ds, kind = self._event_information("2.25.1234567", items)
            status, _ = assoc.send_n_event_report(
                ds, kind, STORAGE_COMMITMENT, STORAGE_COMMITMENT_INSTANCE
            )
            self.stray_status.append(int(status.Status) if status else -1)
        ds, kind = self._event_information(transaction, items)
        status, _ = assoc.send_n_event_report(
            ds, kind, STORAGE_COMMITMENT, STORAGE_COMMITMENT_INSTANCE
        )
        self.report_status.append(int(status.Status) if status else -1)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()


def _nested(depth: int, implicit: bool) -> bytes:
    """Referenced SOP Sequences nested ``depth`` deep, all of undefined length (PS3.5 7.5)."""
    import struct

    header = struct.pack("<HH", 0x0008, 0x1199) + (b"" if implicit else b"SQ\x00\x00")
    opening = (
        header + struct.pack("<I", 0xFFFFFFFF) + struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
    )
    closing = struct.pack("<HHI", 0xFFFE, 0xE00D, 0) + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    return opening * depth + closing * depth


def _send_raw_report(
    assoc: Any,
    kind: str,
    event_type: int,
    sop_instance: str,
    scp: CommitmentSCP,
    transaction: str,
    items: list[tuple[str, str]],
) -> int:
    """An N-EVENT-REPORT-RQ with Event Information bytes of our making; the status answered.

    pynetdicom's send_n_event_report, but with the encoded data set given (it
    would encode a Dataset, and pydicom would not write 1500 levels).
    """
    from io import BytesIO

    from pydicom.uid import UID
    from pynetdicom.dimse_primitives import N_EVENT_REPORT
    from pynetdicom.dsutils import encode

    context = assoc._get_valid_context(STORAGE_COMMITMENT, "", None)
    syntax = context.transfer_syntax[0]
    if kind == "nested":
        raw = _nested(1500, syntax.is_implicit_VR)
    elif kind == "escape":
        # A Transaction UID with a terminal escape sequence and a newline in it
        # (pydicom warns that it is no UI value: that is the point).
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            ds, _ = scp._event_information("1.2\x1b[2J\n3", items)
            raw = encode(ds, syntax.is_implicit_VR, True)
    else:
        ds, _ = scp._event_information(transaction, items)
        raw = encode(ds, syntax.is_implicit_VR, True)
    request = N_EVENT_REPORT()
    request.MessageID = 77
    request.AffectedSOPClassUID = UID(STORAGE_COMMITMENT)
    request.AffectedSOPInstanceUID = UID(sop_instance)
    request.EventTypeID = event_type
    request.EventInformation = BytesIO(raw)
    assoc._reactor_checkpoint.clear()
    while not assoc._is_paused:
        time.sleep(0.0001)
    # "context": an odd presentation context ID the requestor never proposed (PS3.8 9.3.2.2).
    context_id = context.context_id + 2 if kind == "context" else context.context_id
    try:
        assoc.dimse.send_msg(request, context_id)
        _, response = assoc.dimse.get_msg(block=True)
    finally:
        assoc._reactor_checkpoint.set()
    return -1 if response is None else int(response.Status)


@pytest.fixture
def commitment_scp() -> Iterator[Callable[..., CommitmentSCP]]:
    require_module("pynetdicom")
    started: list[CommitmentSCP] = []

    def start(**kwargs: Any) -> CommitmentSCP:
        scp = CommitmentSCP(**kwargs).start()
        started.append(scp)
        return scp

    try:
        yield start
    finally:
        for scp in started:
            scp.stop()


def _answered(scp: CommitmentSCP, reports: int) -> list[int]:
    """The statuses the SCP got for its reports, once it has recorded ``reports`` of them.

    verify exits as soon as it has answered the last report; the SCP's
    thread records that answer a moment later.
    """
    wait_until(
        lambda: len(scp.report_status) >= reports,
        10,
        f"the SCP to record the answers to its {reports} report(s)",
        state=lambda: scp.report_status,
    )
    return list(scp.report_status)


@pytest.mark.parametrize("mode", ["same", "new"])
def test_pynetdicom_commits_some_and_refuses_others(
    commitment_scp: Callable[..., CommitmentSCP], archive: SynthArchive, tmp_path: Path, mode: str
) -> None:
    report_port = free_port()
    refused = {archive.sop_instance_uids[archive.files[i]] for i in (1, 5, 10)}
    scp = commitment_scp(mode=mode, refuse=refused, report_port=report_port)
    logs = tmp_path / "logs"
    assert _send("PYCOMMIT", scp.port, logs, "-r", "-i", str(archive.root)).returncode == 0
    args = ["--commit", "--commit-batch", "4", "--commit-timeout", "20"]
    if mode == "new":
        args += ["--commit-port", str(report_port), "--commit-bind", LOOPBACK]
    run = _verify("PYCOMMIT", scp.port, logs, *args)
    assert run.returncode == 1, run.output
    total = len(archive.files)
    assert (
        f"Storage Commitment: {total - 3} committed, 3 commit failed, 0 uncommitted "
        "(3 transaction(s))" in run.stdout
    ), run.output
    assert _answered(scp, 3) == [0, 0, 0]
    assert scp.agreed_scp_role == ([True, True, True] if mode == "new" else [])
    rows = _journal_rows(logs)
    for uid, state, reason, _, held in rows.values():
        if uid in refused:
            assert (state, reason, held) == (
                "commit_failed",
                "0x0112 No such object instance",
                None,
            )
        else:
            assert state == "committed" and held is not None
    listed = _missing_csv(logs)
    assert {row["sop_instance_uid"] for row in listed} == refused
    assert {row["status"] for row in listed} == {"0x0112"}


def test_unknown_transaction_is_answered_with_an_error(
    commitment_scp: Callable[..., CommitmentSCP], archive: SynthArchive, tmp_path: Path
) -> None:
    scp = commitment_scp(mode="same", stray=True)
    logs = tmp_path / "logs"
    assert _send("PYCOMMIT", scp.port, logs, "-r", "-i", str(archive.root)).returncode == 0
    run = _verify("PYCOMMIT", scp.port, logs, "--commit", "--commit-timeout", "20")
    assert run.returncode == 0, run.output
    assert _answered(scp, 1) == [0]
    assert scp.stray_status == [0x0115]  # Invalid argument value (PS3.7 C.5)
    assert "Transaction UID 2.25.1234567, which this verification did not ask about" in run.stderr


def test_scp_that_never_reports(
    commitment_scp: Callable[..., CommitmentSCP], archive: SynthArchive, tmp_path: Path
) -> None:
    scp = commitment_scp(mode="never")
    logs = tmp_path / "logs"
    assert _send("PYCOMMIT", scp.port, logs, "-r", "-i", str(archive.root)).returncode == 0
    started = time.monotonic()
    run = _verify("PYCOMMIT", scp.port, logs, "--commit", "--commit-timeout", "1.5")
    assert time.monotonic() - started < 30
    assert run.returncode == 1, run.output
    total = len(archive.files)
    assert f"0 committed, 0 commit failed, {total} uncommitted" in run.stdout
    assert "did not arrive on the association within --commit-timeout 1.5 s" in run.stdout
    assert {(r[1], r[2]) for r in _journal_rows(logs).values()} == {
        ("uncommitted", "no N-EVENT-REPORT on the association within 1.5 s")
    }


@pytest.mark.parametrize("mode", ["same", "new"])
def test_hostile_reports_are_refused_and_logged_not_a_traceback(
    commitment_scp: Callable[..., CommitmentSCP], archive: SynthArchive, tmp_path: Path, mode: str
) -> None:
    """Before the real report: Event Information nested 1500 deep, an Event Type ID that is
    neither 1 nor 2, an Affected SOP Instance UID that is not the well-known one (PS3.4
    J.3.3), a Transaction UID with control characters. Each is refused with its status,
    logged naming the peer; the association (and our listener) goes on to the real one."""
    report_port = free_port()
    scp = commitment_scp(
        mode=mode,
        report_port=report_port,
        prelude=[
            ("nested", 1, STORAGE_COMMITMENT_INSTANCE),
            ("valid", 0, STORAGE_COMMITMENT_INSTANCE),
            ("valid", 1, "1.2.3.4"),
            ("escape", 1, STORAGE_COMMITMENT_INSTANCE),
        ],
    )
    logs = tmp_path / "logs"
    assert _send("PYCOMMIT", scp.port, logs, "-r", "-i", str(archive.root)).returncode == 0
    args = ["--commit", "--commit-timeout", "20"]
    if mode == "new":
        args += ["--commit-port", str(report_port), "--commit-bind", LOOPBACK]
    run = _verify("PYCOMMIT", scp.port, logs, *args)
    assert "Traceback" not in run.output, run.output
    # 0110H Processing failure, 0113H No such Event Type, 0112H No such SOP Instance,
    # 0115H Invalid argument value (PS3.7 10.1.1.1.8).
    assert scp.prelude_status == [0x0110, 0x0113, 0x0112, 0x0115], run.output
    assert _answered(scp, 1) == [0]
    assert run.returncode == 0, run.output
    total = len(archive.files)
    assert f"Storage Commitment: {total} committed, 0 commit failed, 0 uncommitted" in run.stdout
    peer = "PYCOMMIT@" if mode == "new" else f"PYCOMMIT@{LOOPBACK}:{scp.port}"
    errors = [line for line in run.stderr.splitlines() if line.startswith("ERROR")]
    assert any(
        peer in line and f"sequences nested deeper than {MAX_NESTING_DEPTH}" in line
        for line in errors
    ), run.stderr
    assert any(peer in line and "Event Type ID 0, not 1 or 2" in line for line in errors)
    assert any(peer in line and "SOP Instance 1.2.3.4, not" in line for line in errors)
    assert "Transaction UID 1.2?[2J?3, which" in run.stderr
    assert "\x1b" not in run.output


def test_report_on_a_context_never_accepted_ends_the_association_not_the_run(
    commitment_scp: Callable[..., CommitmentSCP], archive: SynthArchive, tmp_path: Path
) -> None:
    scp = commitment_scp(mode="same", prelude=[("context", 1, STORAGE_COMMITMENT_INSTANCE)])
    logs = tmp_path / "logs"
    assert _send("PYCOMMIT", scp.port, logs, "-r", "-i", str(archive.root)).returncode == 0
    run = _verify("PYCOMMIT", scp.port, logs, "--commit", "--commit-timeout", "5")
    assert "Traceback" not in run.output, run.output
    assert run.returncode == 1, run.output
    assert (
        f"ERROR Storage Commitment association with PYCOMMIT@{LOOPBACK}:{scp.port}: "
        f"PYCOMMIT@{LOOPBACK}:{scp.port} sent a report on presentation context 3, which it "
        "never accepted" in run.stdout
    ), run.output
    total = len(archive.files)
    assert f"0 committed, 0 commit failed, {total} uncommitted" in run.stdout


def test_c_find_and_commitment_disagree_one_verdict(
    commitment_scp: Callable[..., CommitmentSCP], archive: SynthArchive, tmp_path: Path
) -> None:
    """A destination whose C-FIND no longer returns an instance its commitment confirms:
    not held (any negative verdict wins), listed once, resent, and the next verify is clean."""
    scp = commitment_scp(mode="same", find=True)
    logs = tmp_path / "logs"
    assert _send("PYCOMMIT", scp.port, logs, "-r", "-i", str(archive.root)).returncode == 0
    total = len(archive.files)
    assert len(scp.held) == total
    lost = archive.files[3]
    del scp.held[archive.sop_instance_uids[lost]]  # C-FIND no longer returns it

    run = _verify("PYCOMMIT", scp.port, logs, "--commit-timeout", "20")
    assert run.returncode == 1, run.output
    assert f"C-FIND: {total - 1} found, 1 missing at destination" in run.stdout, run.output
    assert f"Storage Commitment: {total} committed, 0 commit failed" in run.stdout
    assert "1 instance(s) on which C-FIND and Storage Commitment disagree" in run.stdout
    listed = _missing_csv(logs)
    assert [row["path"] for row in listed] == [str(lost)]
    assert "although Storage Commitment reported it committed" in listed[0]["reason"]
    uid, commit_state, _, find_state, held = _journal_rows(logs)[str(lost)]
    assert (commit_state, find_state, held) == ("committed", "missing", None)

    csv_path = sorted(logs.glob("fastsend_missing_*.csv"))[-1]
    resent = _send("PYCOMMIT", scp.port, logs, "--input-list", str(csv_path))
    assert resent.returncode == 0, resent.output
    assert "1 files: 1 stored" in resent.stderr, resent.output
    assert archive.sop_instance_uids[lost] in scp.held

    again = _verify("PYCOMMIT", scp.port, logs, "--commit-timeout", "20")
    assert again.returncode == 0, again.output
    assert f"C-FIND: {total} found, 0 missing" in again.stdout
    assert f"all {total} instance(s) verified" in again.stdout
    assert len(list(logs.glob("fastsend_missing_*.csv"))) == 1


def test_unreadable_c_find_match_is_a_problem_naming_the_peer(
    commitment_scp: Callable[..., CommitmentSCP], archive: SynthArchive, tmp_path: Path
) -> None:
    """A STUDY match nested 1500 deep: its study is unverified and said so, no traceback."""
    scp = commitment_scp(commitment=False, find=True, find_nested=True)
    logs = tmp_path / "logs"
    assert _send("PYCOMMIT", scp.port, logs, "-r", "-i", str(archive.root)).returncode == 0
    run = _verify("PYCOMMIT", scp.port, logs, "--find")
    assert "Traceback" not in run.output, run.output
    assert run.returncode == 1, run.output
    problems = [line for line in run.stdout.splitlines() if line.startswith("ERROR study ")]
    assert len(problems) == len(set(archive.study_uids.values())), run.output
    assert all(
        f"a C-FIND match from PYCOMMIT@{LOOPBACK}:{scp.port} cannot be read: sequences nested "
        f"deeper than {MAX_NESTING_DEPTH}" in line
        for line in problems
    ), run.output
    assert f"{len(archive.files)} instance(s) could not be verified by any method" in run.stdout


def test_destination_that_refuses_both_methods_says_so(
    commitment_scp: Callable[..., CommitmentSCP], archive: SynthArchive, tmp_path: Path
) -> None:
    """It answered, so not "cannot be reached": exit 3 with its own message."""
    scp = commitment_scp(commitment=False)
    logs = tmp_path / "logs"
    assert _send("PYCOMMIT", scp.port, logs, "-r", "-i", str(archive.root)).returncode == 0
    run = _verify("PYCOMMIT", scp.port, logs)
    assert run.returncode == 3, run.output
    assert "does not support C-FIND" in run.stdout
    assert "does not support Storage Commitment" in run.stdout
    assert (
        f"ERROR PYCOMMIT@{LOOPBACK}:{scp.port} answered but refused both C-FIND (Study Root) "
        "and Storage Commitment" in run.stdout
    )
    assert "cannot be reached" not in run.output


def test_listener_takes_four_associations_at_once() -> None:
    """A fifth association while four are open is rejected-transient, local-limit-exceeded
    (PS3.8 9.3.4); once one is released, the next is accepted."""
    require_module("pynetdicom")
    from pynetdicom import AE

    from dicom_fastsend.engine.verify import CommitmentListener, TransactionBook

    logged: list[tuple[str, str]] = []
    listener = CommitmentListener(
        LOOPBACK, 0, "FASTSEND", TransactionBook(), lambda *entry: logged.append(entry)
    ).start()
    ae = AE(ae_title="PYCOMMIT")
    ae.add_requested_context(STORAGE_COMMITMENT)
    opened = []
    try:
        opened = [ae.associate(LOOPBACK, listener.port, ae_title="FASTSEND") for _ in range(5)]
        assert [a.is_established for a in opened] == [True, True, True, True, False]
        assert opened[4].is_rejected
        assert any("4 Storage Commitment associations are open" in m for _, m in logged)
        opened[0].release()
        deadline = time.monotonic() + 10
        again = ae.associate(LOOPBACK, listener.port, ae_title="FASTSEND")
        while not again.is_established and time.monotonic() < deadline:
            time.sleep(0.2)  # the released association's thread is ending
            again = ae.associate(LOOPBACK, listener.port, ae_title="FASTSEND")
        opened.append(again)
        assert again.is_established
    finally:
        for association in opened:
            if association.is_established:
                association.release()
        listener.stop()


def test_commit_options_are_checked_before_anything_is_sent(tmp_path: Path) -> None:
    """--commit-port 0 (a port the destination cannot be told) and send --commit without a
    journal are usage errors."""
    run = fastsend("verify", *_destination("NOBODY", 104), "--commit-port", "0")
    assert run.returncode == 2, run.output
    assert "--commit-port" in run.stderr
    from dicom_fastsend.config import CommitConfig, PeerConfig, SendConfig

    peer = PeerConfig(called_ae_title="NOBODY", host=LOOPBACK, port=104)
    with pytest.raises(ValueError, match="--commit needs the journal"):
        SendConfig(peer=peer, inputs=(tmp_path,), log_dir=None, commit=CommitConfig())
    with pytest.raises(ValueError, match="--commit-port 0 is not between 1 and 65535"):
        CommitConfig(port=0)


# ------------------------------------------------------------------ bad input


def test_unreachable_destination_exits_3(
    orthanc: Orthanc, archive: SynthArchive, tmp_path: Path
) -> None:
    logs = tmp_path / "logs"
    assert _send("ORTHANC", orthanc.dicom_port, logs, "-r", "-i", str(archive.root)).returncode == 0
    port = orthanc.dicom_port
    orthanc.stop()
    run = _verify("ORTHANC", port, logs, "--connect-timeout", "2")
    assert run.returncode == 3, run.output
    assert f"cannot connect to {LOOPBACK}:{port}" in run.stdout


def test_journal_of_another_destination_is_refused(
    orthanc: Orthanc, archive: SynthArchive, tmp_path: Path
) -> None:
    logs = tmp_path / "logs"
    assert _send("ORTHANC", orthanc.dicom_port, logs, "-r", "-i", str(archive.root)).returncode == 0
    (journal,) = logs.glob("fastsend_journal_*.sqlite")
    run = fastsend("verify", *_destination("OTHER", orthanc.dicom_port), "--journal", str(journal))
    assert run.returncode == 3, run.output
    assert f"ORTHANC@{LOOPBACK}:{orthanc.dicom_port}" in run.stderr
    assert f"OTHER@{LOOPBACK}:{orthanc.dicom_port}" in run.stderr


def test_no_journal_is_refused(tmp_path: Path) -> None:
    run = fastsend("verify", *_destination("NOBODY", 104), "--log-dir", str(tmp_path))
    assert run.returncode == 3, run.output
    assert "no journal at" in run.stderr
