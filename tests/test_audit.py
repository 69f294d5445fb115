"""The audit report (CSV, JSON, HTML) after real sends, and its HTML as Chromium shows it."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import sqlite3
import struct
import subprocess
import sys
import zlib
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import jsonschema
import pydicom
import pytest

from dicom_fastsend.audit import AUDIT_SCHEMA, COUNTS, CSV_COLUMNS, audit_paths
from dicom_fastsend.engine.inventory import Inventory
from fastsend_cli import Run, fastsend, send_args
from peers import PynetdicomSCP, SynthArchive, free_port, make_archive
from require import missing_peer

LOOPBACK = "127.0.0.1"
# A patient name as a hostile file could carry it: markup, quotes, an ampersand.
HOSTILE_NAME = '<script>alert("x")</script><img src=https://example.com/a.png>&amp;^O\'Neil'
CHROMIUM_HINT = (
    "Chromium is not installed: `sudo apt-get install chromium` (or run `bash tests/run.sh`,"
    " which installs it)"
)


def summary_of(run: Run) -> dict[str, Any]:
    match = re.search(r"^summary: (\S+)$", run.stderr, re.MULTILINE)
    assert match is not None, run.output
    summary: dict[str, Any] = json.loads(Path(match[1]).read_text(encoding="utf-8"))
    return summary


def audit_json(path: Path) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    jsonschema.validate(document, json.loads(AUDIT_SCHEMA.read_text(encoding="utf-8")))
    return document


def on_disk(journal: Path) -> dict[str, tuple[int, bytes] | None]:
    """The journal and its -wal and -shm: (mtime in ns, bytes), None if absent."""
    state: dict[str, tuple[int, bytes] | None] = {}
    for suffix in ("", "-wal", "-shm"):
        path = Path(f"{journal}{suffix}")
        state[suffix] = (path.stat().st_mtime_ns, path.read_bytes()) if path.exists() else None
    return state


class Migration:
    """A send to a real SCP with every kind of outcome, and what the test knows of it."""

    def __init__(self, tmp_path: Path, scp_factory: Any) -> None:
        root = tmp_path / "archive"
        self.archive: SynthArchive = make_archive(root, explicit_studies=3, instances_per_study=4)
        files = sorted(self.archive.files)
        # The first study's patient gets a hostile name (PS3.5 PN, as a file could hold it).
        self.hostile_study = self.archive.study_uids[files[0]]
        for path in files:
            if self.archive.study_uids[path] == self.hostile_study:
                dataset = pydicom.dcmread(path)
                dataset.PatientName = HOSTILE_NAME
                dataset.save_as(path)
        # Two instances of one study refused for good (PS3.4 B.2.3: C000), one of another.
        self.refused = [files[5], files[6], files[-1]]
        refused_uids = {self.archive.sop_instance_uids[p] for p in self.refused}
        # A copy of a stored file: the same SOP Instance UID, skipped as a duplicate.
        self.duplicate = root / "copy_of_first.dcm"
        shutil.copyfile(files[0], self.duplicate)
        # A file cut short (fails) and one that is not DICOM (skipped).
        data = files[1].read_bytes()
        (root / "cut.dcm").write_bytes(data[: len(data) // 2])
        (root / "notes.txt").write_text("not DICOM\n")
        self.scp: PynetdicomSCP = scp_factory(
            status=lambda dataset: 0xC000 if dataset.SOPInstanceUID in refused_uids else 0
        )
        self.logs = tmp_path / "logs"
        self.run = fastsend(
            *send_args(LOOPBACK, self.scp.port, self.scp.ae_title, str(root)),
            "--log-dir",
            str(self.logs),
        )
        assert self.run.returncode == 1, self.run.output
        self.summary = summary_of(self.run)
        self.journal = Path(self.summary["journal"])
        self.paths = audit_paths(self.logs, self.summary["session_id"])

    def expected_studies(self) -> dict[str, dict[str, int]]:
        """Per study: files, stored, failed, skipped, as the test arranged them."""
        expected: dict[str, dict[str, int]] = {}
        for path, study in self.archive.study_uids.items():
            counts = expected.setdefault(study, Counter())
            counts["files"] += 1
            counts["failed" if path in self.refused else "stored"] += 1
        duplicated = expected[self.hostile_study]
        duplicated["files"] += 1
        duplicated["skipped"] += 1
        return {s: {k: c.get(k, 0) for k in ("files", "stored", "failed", "skipped")}
                for s, c in expected.items()}  # fmt: skip


@pytest.fixture
def migration(tmp_path: Path, pynetdicom_scp_factory: Any) -> Migration:
    return Migration(tmp_path, pynetdicom_scp_factory)


def test_the_report_of_a_send_adds_up_to_its_summary(migration: Migration) -> None:
    csv_path, json_path, html_path = migration.paths
    assert f"audit: {html_path}" in migration.run.stderr
    assert all(p.exists() for p in migration.paths), list(migration.logs.iterdir())
    assert not list(migration.logs.glob("*.part"))
    counts = migration.summary["counts"]
    report = audit_json(json_path)
    assert report["session_id"] == migration.summary["session_id"]
    assert report["journal"] == migration.summary["journal"]
    assert report["destination"] == f"{migration.scp.ae_title}@{LOOPBACK}:{migration.scp.port}"
    totals = report["totals"]
    assert totals["files"] == counts["found"] == len(migration.archive.files) + 3
    assert totals["stored"] == counts["stored"] + counts["warning"]
    assert totals["warning"] == counts["warning"] == 0
    assert totals["failed"] == counts["failed"] == 4  # three refused, one cut short
    assert totals["skipped"] == counts["skipped"] == 2  # the duplicate, the text file
    assert totals["remaining"] == 0
    # Nothing was verified yet.
    assert all(totals[k] == 0 for k in ("committed", "commit_failed", "found", "missing"))

    expected = migration.expected_studies()
    studies = report["studies"]
    got = {s["study_instance_uid"]: {k: s[k] for k in ("files", "stored", "failed", "skipped")}
           for s in studies}  # fmt: skip
    assert got == expected
    assert report["study_count"] == len(expected)
    # Incomplete studies (a failure or a skip) first, then the complete ones.
    incomplete = {s for s, c in expected.items() if c["stored"] < c["files"]}
    assert [s["status"] for s in studies] == ["incomplete"] * len(incomplete) + ["stored"] * (
        len(expected) - len(incomplete)
    )
    assert report["studies_by_status"] == {
        "missing": 0,
        "incomplete": len(incomplete),
        "stored": len(expected) - len(incomplete),
        "verified": 0,
    }
    # Header attributes come from the files.
    first = pydicom.dcmread(sorted(migration.archive.files)[0], stop_before_pixels=True)
    hostile = next(s for s in studies if s["study_instance_uid"] == migration.hostile_study)
    assert hostile["patient_name"] == HOSTILE_NAME
    assert (hostile["patient_id"], hostile["accession_number"], hostile["study_date"]) == (
        first.PatientID,
        first.AccessionNumber,
        first.StudyDate,
    )
    # The study with two refusals names the C-STORE status and the count.
    refused_study = migration.archive.study_uids[migration.refused[0]]
    [failure] = [s for s in studies if s["study_instance_uid"] == refused_study][0]["reasons"]
    assert (failure["outcome"], failure["status"], failure["files"]) == ("failed", "0xC000", 2)
    assert failure["reason"] in {f["reason"] for f in migration.summary["failures"]}
    # The cut file and the text file were never read as DICOM.
    unread = report["without_study_uid"]
    assert {k: unread[k] for k in ("files", "stored", "failed", "skipped")} == {
        "files": 2,
        "stored": 0,
        "failed": 1,
        "skipped": 1,
    }
    # Every stored file is in one bin of the throughput series.
    assert sum(report["throughput"]["files_stored"]) == totals["stored"]

    # The CSV: the same rows, the files without a study last, columns adding up to the totals.
    with csv_path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert rows[-1]["study_instance_uid"] == ""
    for name in COUNTS:
        assert sum(int(r[name]) for r in rows) == totals[name], name
    by_uid = {r["study_instance_uid"]: r for r in rows[:-1]}
    assert {u: {k: int(r[k]) for k in ("files", "stored", "failed", "skipped")}
            for u, r in by_uid.items()} == expected  # fmt: skip
    assert by_uid[migration.hostile_study]["patient_name"] == HOSTILE_NAME
    assert "0xC000" in by_uid[refused_study]["reasons"]


def test_a_rerun_that_changes_nothing_names_the_report_that_still_holds(
    tmp_path: Path, storescp: Any
) -> None:
    """A rerun that finds everything stored writes no new report: it names the last one,
    which says what a new one would. Any change to the inventory (a file sent again, a
    verification from another process) or a report file gone, and a new one is written."""
    from dicom_fastsend.engine.inventory import FindState

    archive = make_archive(tmp_path / "archive", explicit_studies=2, instances_per_study=3)
    logs = tmp_path / "logs"
    args = [*send_args(LOOPBACK, storescp.port, storescp.aet, str(archive.root))]
    args += ["--log-dir", str(logs)]

    def send() -> tuple[Run, dict[str, Any]]:
        run = fastsend(*args)
        assert run.returncode == 0, run.output
        return run, summary_of(run)

    first, first_summary = send()
    written = audit_paths(logs, first_summary["session_id"])
    assert f"audit: {written[2]}\n" in first.stderr
    on_disk_before = {p: p.stat().st_mtime_ns for p in written}

    rerun, rerun_summary = send()
    assert rerun_summary["counts"]["skipped"] == len(archive.files)
    assert not any(p.exists() for p in audit_paths(logs, rerun_summary["session_id"]))
    first_id = first_summary["session_id"]
    assert (
        f"audit: {written[2]} (still holds: written by session {first_id}; the journal has"
        " not changed since)" in rerun.stderr
    )
    assert {p: p.stat().st_mtime_ns for p in written} == on_disk_before
    assert rerun_summary["audit_report"] == {
        "html": str(written[2]),
        "written_by_session": first_id,
    }
    assert first_summary["audit_report"] == {
        "html": str(written[2]),
        "written_by_session": first_id,
    }
    log = (logs / f"fastsend_{rerun_summary['session_id']}.log").read_text(encoding="utf-8")
    assert f"audit report {written[2]} (and its .csv, .json) still holds" in log
    # What holds is what a new report says, but for the header (sessions, time read).
    fresh = fastsend("audit", "--journal", rerun_summary["journal"], "--out", str(tmp_path / "n"))
    assert fresh.returncode == 0, fresh.output
    [fresh_json] = (tmp_path / "n").glob("*.json")
    old, new = audit_json(written[1]), audit_json(fresh_json)
    for key in ("totals", "studies", "without_study_uid", "throughput", "studies_by_status"):
        assert old[key] == new[key], key

    # A file changed since: sent again, so a new report.
    changed = sorted(archive.files)[0]
    os.utime(changed, ns=(1_000_000_000, 1_000_000_000))
    third, third_summary = send()
    assert third_summary["counts"]["stored"] == 1
    assert all(p.exists() for p in audit_paths(logs, third_summary["session_id"]))
    assert "still holds" not in third.stderr

    # A verification written by another process changes rows: a new report again.
    destination = f"{storescp.aet}@{LOOPBACK}:{storescp.port}"
    Inventory(Path(third_summary["journal"]), destination, "v").record_find(
        [(str(changed), FindState.FOUND)]
    )
    _, fourth_summary = send()
    fourth = audit_paths(logs, fourth_summary["session_id"])
    assert all(p.exists() for p in fourth)
    assert audit_json(fourth[1])["totals"]["found"] == 1

    # The report that would hold is gone (one of its three files): a new one.
    fourth[0].unlink()
    _, fifth_summary = send()
    assert all(p.exists() for p in audit_paths(logs, fifth_summary["session_id"]))

    # A run with a log directory of its own gets a report there.
    other_logs = tmp_path / "other_logs"
    journal_args = ["--journal", fifth_summary["journal"], "--log-dir", str(other_logs)]
    sixth = fastsend(*args[:-2], *journal_args)
    assert sixth.returncode == 0, sixth.output
    sixth_id = summary_of(sixth)["session_id"]
    assert all(p.exists() for p in audit_paths(other_logs, sixth_id))

    # A session of an earlier fastsend (which does not count the revision) wrote
    # the journal meanwhile: what it changed cannot show, so a new report.
    with sqlite3.connect(fifth_summary["journal"]) as db:
        db.execute(
            "INSERT INTO sessions (session_id, started_at, pid, host) VALUES ('old', 0, 1, 'h')"
        )
    db.close()
    _, seventh_summary = send()
    assert all(p.exists() for p in audit_paths(logs, seventh_summary["session_id"]))
    _, eighth_summary = send()  # and then that one holds again
    assert not any(p.exists() for p in audit_paths(logs, eighth_summary["session_id"]))


def test_verification_states_in_the_inventory_are_counted(migration: Migration) -> None:
    """commit_state and find_state, as `fastsend verify` records them, written here directly."""
    studies = sorted(set(migration.archive.study_uids.values()))
    complete = [
        s
        for s in studies
        if s != migration.hostile_study
        and all(migration.archive.study_uids[p] != s for p in migration.refused)
    ]
    assert len(complete) == 1, complete
    verified_study = complete[0]
    missing_study = migration.archive.study_uids[migration.refused[0]]
    with sqlite3.connect(migration.journal) as db:
        held = "state IN ('stored', 'warning')"
        # Every stored file committed and found, but for these; as `fastsend verify`
        # records them, verified_at after the row's last outcome.
        db.execute(
            "UPDATE files SET commit_state = 'committed', find_state = 'found',"
            f" verified_at = last_at + 1 WHERE {held}"
        )
        [one_missing] = db.execute(
            f"SELECT dir, name FROM files WHERE {held} AND study_instance_uid = ?"
            " ORDER BY dir, name LIMIT 1",
            (missing_study,),
        ).fetchall()
        db.execute(
            "UPDATE files SET find_state = 'missing', commit_state = 'commit_failed',"
            " commit_reason = 'Failure Reason 0x0112: No such object instance'"
            " WHERE dir = ? AND name = ?",
            one_missing,
        )
        db.execute(
            f"UPDATE files SET commit_state = 'uncommitted', find_state = NULL WHERE {held}"
            " AND study_instance_uid = ?",
            (migration.hostile_study,),
        )
        # A verification older than the row's last outcome (the file was sent again
        # since) is not counted: these failed after they were "found".
        db.execute(
            "UPDATE files SET find_state = 'found', commit_state = 'committed',"
            " verified_at = last_at - 1 WHERE state = 'failed'"
        )
    out = migration.logs / "again"
    before = on_disk(migration.journal)
    run = fastsend("audit", "--journal", str(migration.journal), "--out", str(out))
    assert run.returncode == 0, run.output
    assert on_disk(migration.journal) == before  # only read: no byte, no side file written
    [json_path] = out.glob("fastsend_audit_*.json")
    assert json_path.name == f"fastsend_audit_{migration.summary['session_id']}.json"
    report = audit_json(json_path)
    by_uid = {s["study_instance_uid"]: s for s in report["studies"]}
    stored = report["totals"]["stored"]
    hostile_stored = by_uid[migration.hostile_study]["stored"]
    assert report["totals"]["missing"] == 1 and report["totals"]["commit_failed"] == 1
    assert report["totals"]["uncommitted"] == hostile_stored
    assert report["totals"]["committed"] == stored - 1 - hostile_stored
    assert report["totals"]["found"] == stored - 1 - hostile_stored
    # The study with a missing instance comes first, whatever else it has.
    assert report["studies"][0]["study_instance_uid"] == missing_study
    missing = by_uid[missing_study]
    assert (missing["status"], missing["missing"], missing["commit_failed"]) == ("missing", 1, 1)
    assert {"outcome": "commit_failed", "reason": "Failure Reason 0x0112: No such object instance",
            "status": None, "files": 1} in missing["reasons"]  # fmt: skip
    assert missing["verified"] == missing["stored"] - 1
    verified = by_uid[verified_study]
    assert verified["status"] == "verified"
    assert verified["verified"] == verified["files"] == verified["committed"] == verified["found"]
    hostile = by_uid[migration.hostile_study]
    assert (hostile["verified"], hostile["found"], hostile["committed"]) == (0, 0, 0)
    assert report["studies_by_status"]["verified"] == 1
    assert report["studies_by_status"]["missing"] == 1
    with (out / json_path.name.replace(".json", ".csv")).open(encoding="utf-8") as handle:
        rows = {r["study_instance_uid"]: r for r in csv.DictReader(handle)}
    assert (rows[missing_study]["missing"], rows[missing_study]["status"]) == ("1", "missing")
    assert rows[verified_study]["verified"] == str(verified["files"])
    assert "commit failed 1: Failure Reason 0x0112" in rows[missing_study]["reasons"]
    assert "1 with instances missing" in run.stdout and "1 verified" in run.stdout


def test_verify_against_orthanc_then_resend(orthanc_factory: Any, tmp_path: Path) -> None:
    """verify --find writes the audit; a deleted instance is missing until resent and verified."""
    # Orthanc answers C-FIND only to a modality it knows (DicomAlwaysAllowFind is off).
    orthanc = orthanc_factory(
        config_overrides={"DicomModalities": {"fastsend": ["FASTSEND", LOOPBACK, free_port()]}}
    )
    archive = make_archive(tmp_path / "archive")
    logs = tmp_path / "logs"
    destination = ["-a", "ORTHANC", "-H", LOOPBACK, "-p", str(orthanc.dicom_port)]
    sent = fastsend("send", *destination, "-r", "-i", str(archive.root), "--log-dir", str(logs))
    assert sent.returncode == 0, sent.output
    total = len(archive.files)

    def verify(exit_code: int = 0) -> dict[str, Any]:
        run = fastsend("verify", *destination, "--find", "--log-dir", str(logs))
        assert run.returncode == exit_code, run.output
        match = re.search(r"^audit: (\S+)\.html$", run.stderr, re.MULTILINE)
        assert match is not None, run.output
        return audit_json(Path(match[1] + ".json"))

    clean = verify()
    assert clean["totals"]["found"] == clean["totals"]["verified"] == total
    assert clean["studies_by_status"]["verified"] == clean["study_count"] == 4

    deleted = sorted(archive.files)[0]
    uid = archive.sop_instance_uids[deleted]
    orthanc.rest("DELETE", f"/instances/{orthanc.orthanc_id(uid)}")
    report = verify(exit_code=1)
    assert (report["totals"]["found"], report["totals"]["missing"]) == (total - 1, 1)
    [study] = [s for s in report["studies"] if s["status"] == "missing"]
    assert study["study_instance_uid"] == archive.study_uids[deleted]
    assert report["studies"][0] == study  # worst first

    [missing_csv] = logs.glob("fastsend_missing_*.csv")
    resent = fastsend(
        "send", *destination, "--input-list", str(missing_csv), "--log-dir", str(logs)
    )
    assert resent.returncode == 0, resent.output
    after = audit_json(audit_paths(logs, summary_of(resent)["session_id"])[1])
    # Sent again after the verification: no longer missing, not verified yet.
    assert (after["totals"]["missing"], after["totals"]["found"]) == (0, total - 1)
    assert after["studies_by_status"] == {"missing": 0, "incomplete": 0, "stored": 1, "verified": 3}
    final = verify()
    assert final["totals"]["verified"] == total
    assert final["studies_by_status"]["verified"] == 4


# ---------------------------------------------------------------- the page


class Page(HTMLParser):
    """What the DOM holds: elements by tag with their attributes, and the text of each row."""

    def __init__(self) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str]]] = []
        self.rows: list[tuple[dict[str, str], list[str]]] = []
        self.titles: list[str] = []
        self._cells: list[str] | None = None
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {k: v or "" for k, v in attrs}
        self.elements.append((tag, attributes))
        if tag == "tr":
            self._cells = []
            self.rows.append((attributes, self._cells))
        elif tag == "td" and self._cells is not None:
            self._cells.append("")
        elif tag == "title":
            self._in_title = True
            self.titles.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.titles[-1] += data
        elif self._cells:
            self._cells[-1] += data

    def all(self, tag: str, **attributes: str) -> list[dict[str, str]]:
        return [
            a
            for t, a in self.elements
            if t == tag and all(a.get(k.rstrip("_")) == v for k, v in attributes.items())
        ]


def chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    missing_peer("no chromium on PATH", CHROMIUM_HINT)


def headless(page: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # --no-sandbox: the tests may run as root (a container), where Chromium's sandbox refuses.
    return subprocess.run(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", *args,
         page.resolve().as_uri()],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip


def png_pixels(path: Path) -> tuple[int, int, bytes]:
    """(width, height, the decompressed scanlines) of a PNG (PNG spec: IHDR, IDAT chunks)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    offset, idat = 8, b""
    width = height = 0
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind = data[offset + 4 : offset + 8]
        body = data[offset + 8 : offset + 8 + length]
        if kind == b"IHDR":
            width, height = struct.unpack(">II", body[:8])
        elif kind == b"IDAT":
            idat += body
        offset += 12 + length
    return width, height, zlib.decompress(idat)


def test_the_page_as_chromium_shows_it(migration: Migration, tmp_path: Path) -> None:
    html_path = migration.paths[2]
    source = html_path.read_text(encoding="utf-8")
    # Nothing to fetch: no tag with a src or href (the hostile name's <img src=https://...>
    # is text), no CSS url() or @import, no script.
    assert not re.search(r"<[^>]*\s(src|href|xlink:href)\s*=", source, re.I)
    assert not re.search(r"url\(|@import|<script|<link|<iframe|<img|<object|<embed", source, re.I)
    assert "Content-Security-Policy" in source and "default-src 'none'" in source
    # The hostile name is text, escaped, never markup.
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in source

    dom = headless(html_path, "--dump-dom").stdout
    page = Page()
    page.feed(dom)
    report = audit_json(migration.paths[1])
    assert not page.all("script") and not page.all("img") and not page.all("link")
    assert not [a for _, a in page.elements if {"src", "href", "xlink:href"} & set(a)]
    study_rows = [(a, cells) for a, cells in page.rows if a.get("class") == "study"]
    assert len(study_rows) == report["study_count"] == len(migration.expected_studies())
    heads = [
        "Status", "Patient ID", "Patient name", "Study Instance UID", "Accession", "Study date",
        "Files", "Stored", "Committed", "Found (C-FIND)", "Failed", "Skipped", "Not sent",
        "Missing", "Top reasons",
    ]  # fmt: skip
    for (attributes, cells), study in zip(study_rows, report["studies"], strict=True):
        assert attributes["data-status"] == study["status"]
        assert len(cells) == len(heads)
        shown = dict(zip(heads, cells, strict=True))
        assert shown["Study Instance UID"] == study["study_instance_uid"]
        assert shown["Patient name"] == study["patient_name"]
        assert shown["Status"] == study["status"]
        for head, key in (("Files", "files"), ("Stored", "stored"), ("Failed", "failed"),
                          ("Skipped", "skipped"), ("Missing", "missing")):  # fmt: skip
            assert int(shown[head].replace(",", "")) == study[key], head
    assert any(cells and cells[2] == HOSTILE_NAME for _, cells in study_rows)
    [(_, unread)] = [(a, c) for a, c in page.rows if a.get("class") == "unread"]
    assert unread[0].startswith("No Study Instance UID")
    # The two charts: a bar per throughput bin, a bar per outcome.
    assert page.all("svg", id="throughput") and page.all("svg", id="outcomes")
    bins = page.all("rect", class_="bin")
    assert len(bins) == len(report["throughput"]["files_stored"])
    stored_in_titles = sum(
        int(m[1].replace(",", "")) for t in page.titles if (m := re.search(r": ([\d,]+) files$", t))
    )
    assert stored_in_titles == report["totals"]["stored"]
    outcomes = {a["data-outcome"] for a in page.all("rect", class_="outcome")}
    assert {"stored", "failed", "skipped", "committed", "found", "missing"} <= outcomes

    # A person's view: a screenshot, looked at when the page changes (the test checks it is
    # the size asked for and not blank).
    shot = tmp_path / "audit.png"
    headless(html_path, f"--screenshot={shot}", "--window-size=1400,1100")
    width, height, pixels = png_pixels(shot)
    assert (width, height) == (1400, 1100)
    assert len(set(pixels)) > 50, "the screenshot is blank"


# ---------------------------------------------------------------- bad input, and size


def test_audit_without_a_usable_journal(tmp_path: Path) -> None:
    run = fastsend("audit", "--journal", str(tmp_path / "none.sqlite"))
    assert run.returncode == 3, run.output
    assert f"no journal at {tmp_path / 'none.sqlite'}" in run.stderr
    run = fastsend("audit", "-a", "X")
    assert run.returncode == 2 and "-a, -H and -p go together" in run.stderr
    run = fastsend("audit")
    assert run.returncode == 2 and "give the destination (-a, -H, -p) or --journal" in run.stderr
    journal = tmp_path / "j.sqlite"
    Inventory(journal, "THEIRS@10.0.0.1:104", "s1").close()
    blocked = tmp_path / "a_file"
    blocked.write_text("")
    run = fastsend("audit", "--journal", str(journal), "--out", str(blocked / "out"))
    assert run.returncode == 3, run.output
    assert f"cannot write the audit report in {blocked / 'out'}" in run.stderr
    run = fastsend("audit", "--journal", str(journal), "-a", "MINE", "-H", LOOPBACK, "-p", "104")
    assert run.returncode == 3, run.output
    assert "records the migration to THEIRS@10.0.0.1:104, not to MINE@127.0.0.1:104" in run.stderr


def inventory_of(journal: Path, studies: int) -> Path:
    """An inventory of ``studies`` studies of two files each, one stored, one failed."""
    Inventory(journal, "BIG@127.0.0.1:104", "s1").close()
    with sqlite3.connect(journal) as db:
        db.executemany(
            "INSERT INTO files (dir, name, size, mtime, study_instance_uid, state, reason,"
            " first_at, last_at, session_id) VALUES (?, ?, 1, 0, ?, ?, ?, 0, ?, 's1')",
            (
                (f"/d{i}", f"f{j}", f"1.2.3.{i}", "failed" if j else "stored",
                 f"reason {i % 7}" if j else "", 1_000_000.0 + i / 100)
                for i in range(studies) for j in range(2)
            ),
        )  # fmt: skip
        db.executemany(
            "INSERT INTO studies (study_instance_uid, patient_id, patient_name) VALUES (?, ?, ?)",
            ((f"1.2.3.{i}", f"P{i}", f"Name^{i}") for i in range(studies)),
        )
    return journal


# Writes the report of argv[1] into argv[2]; prints how much the resident set grew at its
# peak (kB) and the studies written. Writing 5 to clear_refs resets the peak (VmHWM) to the
# current RSS (proc(5)), so what the imports took before does not count.
_MEASURE = """
import re, sys
from pathlib import Path
from dicom_fastsend.audit import write_audit

def status(field):
    text = Path("/proc/self/status").read_text()
    return int(re.search(field + r":\\s+(\\d+) kB", text)[1])

Path("/proc/self/clear_refs").write_text("5")
before = status("VmRSS")
written = write_audit(Path(sys.argv[1]), Path(sys.argv[2]))
print(status("VmHWM") - before, written.studies)
"""


def rss_growth_kb(journal: Path, out: Path) -> tuple[int, int]:
    run = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(journal), str(out)],
        capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    peak, studies = run.stdout.split()
    return int(peak), int(studies)


def test_memory_stays_flat_for_many_studies(tmp_path: Path) -> None:
    """Rows are streamed from SQLite into the files, never gathered: 45,000 studies take
    little more memory than 15,000 (SQLite's page caches fill up, then stay; gathering the
    rows would take some 40 MB more)."""
    small = inventory_of(tmp_path / "small.sqlite", 15_000)
    big = inventory_of(tmp_path / "big.sqlite", 45_000)
    small_growth, small_studies = rss_growth_kb(small, tmp_path / "small")
    big_growth, big_studies = rss_growth_kb(big, tmp_path / "big")
    assert (small_studies, big_studies) == (15_000, 45_000)
    sizes = sum(p.stat().st_size for p in (tmp_path / "big").iterdir())
    assert sizes > 20_000_000
    assert big_growth - small_growth < 10_000, (small_growth, big_growth)
    [report] = (tmp_path / "big").glob("*.json")
    document = audit_json(report)
    assert document["totals"]["failed"] == document["totals"]["stored"] == 45_000
    assert document["studies"][0]["reasons"][0]["files"] == 1
