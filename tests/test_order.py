"""--order and --priority-list: the plan (pure), the queue over a real inventory, and
runs whose receivers (pynetdicom, Orthanc) show the order the studies arrived in."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

from dicom_fastsend.engine.inventory import Inventory, Pending
from dicom_fastsend.engine.order import (
    Group,
    Order,
    PriorityListError,
    Study,
    StudyQueue,
    plan_order,
    read_priority_list,
)
from fastsend_cli import fastsend, send_args
from peers import Orthanc, PynetdicomSCP, SynthArchive, make_archive, start_orthanc


def group(directory: str, *studies: tuple[str, str, str, str]) -> Group:
    return Group(directory, 1, tuple(Study(*s) for s in studies))


A = group("/a", ("1.1", "ACC-A", "20200101", "120000"))
B = group("/b", ("1.2", "ACC-B", "20230101", ""))
C = group("/c", ("1.3", "ACC-C", "20230101", "083000.5"))
UNDATED = group("/d", ("1.4", "ACC-D", "", ""))
NOT_DICOM = Group("/e", 1, ())


def directories(plan_groups: tuple[Group, ...]) -> list[str]:
    return [g.directory for g in plan_groups]


def test_path_order_is_the_directories_order() -> None:
    plan = plan_order([C, UNDATED, A, B], Order.PATH)
    assert directories(plan.groups) == ["/a", "/b", "/c", "/d"]
    assert plan.prioritized == 0 and plan.unmatched == ()


def test_newest_and_oldest_first_by_study_date_and_time_undated_last() -> None:
    groups = [A, B, C, UNDATED, NOT_DICOM]
    # B and C share a date; C's 08:30 is later than B's unknown time (midnight).
    assert directories(plan_order(groups, Order.NEWEST_FIRST).groups) == [
        "/c",
        "/b",
        "/a",
        "/d",
        "/e",
    ]
    assert directories(plan_order(groups, Order.OLDEST_FIRST).groups) == [
        "/a",
        "/b",
        "/c",
        "/d",
        "/e",
    ]


def test_the_priority_list_goes_first_in_its_order_by_uid_or_accession() -> None:
    plan = plan_order(
        [A, B, C, UNDATED], Order.NEWEST_FIRST, ("ACC-D", "1.1", "1.9.9", "ACC-nothing")
    )
    assert directories(plan.groups) == ["/d", "/a", "/c", "/b"]
    assert plan.prioritized == 2
    assert plan.unmatched == ("1.9.9", "ACC-nothing")


def test_a_directory_with_two_studies_goes_where_its_most_urgent_one_would() -> None:
    mixed = group("/m", ("2.1", "", "20190101", ""), ("2.2", "", "20240101", ""))
    assert directories(plan_order([A, B, mixed], Order.NEWEST_FIRST).groups)[0] == "/m"
    assert directories(plan_order([A, B, mixed], Order.OLDEST_FIRST).groups)[0] == "/m"
    assert plan_order([A, mixed], Order.PATH, ("2.2",)).groups[0] == mixed


def test_study_times_sort_as_moments() -> None:
    assert Study(study_date="20200101", study_time="0930").when == "20200101093000"
    assert Study(study_date="20200101", study_time="093000.123").when == "20200101093000"
    assert Study(study_date="2020-01-01").when == ""  # not a DA value (PS3.5 6.2)


def test_read_priority_list(tmp_path: Path) -> None:
    path = tmp_path / "first.txt"
    path.write_text("# clinic's list\n1.2.3\n\n  ACC42  # the urgent one\n1.2.3\n")
    assert read_priority_list(path) == ("1.2.3", "ACC42")
    with pytest.raises(PriorityListError, match=str(tmp_path / "missing.txt")):
        read_priority_list(tmp_path / "missing.txt")


def test_the_queue_takes_directory_by_directory_within_the_batch_limits(tmp_path: Path) -> None:
    inventory = Inventory(tmp_path / "inventory.sqlite", "X@h:1", "session")
    inventory.begin_session()
    files = [Pending(f"/{d}/{n}.dcm", 10, 0.0) for d in "abc" for n in range(3)]
    inventory.add_pending(files)
    assert [row[0] for row in inventory.pending_directories()] == ["/a", "/b", "/c"]
    queue = StudyQueue(["/c", "/a"])  # "/b" not planned: it goes last
    first = queue.take(inventory, 4, 1000)
    assert [f.path for f in first] == ["/c/0.dcm", "/c/1.dcm", "/c/2.dcm", "/a/0.dcm"]
    # 25 bytes: two files; a batch is not made larger by a file of another directory.
    assert [f.path for f in queue.take(inventory, 10, 25)] == ["/a/1.dcm", "/a/2.dcm"]
    assert [f.path for f in queue.take(inventory, 10, 5)] == ["/b/0.dcm"]  # alone: larger
    assert [f.path for f in queue.take(inventory, 10, 1000)] == ["/b/1.dcm", "/b/2.dcm"]
    assert queue.take(inventory, 10, 1000) == []
    inventory.close()


# ---------------------------------------------------------------- real runs

# Study dates per study directory, so that the path order is none of the others.
DATES = ["20200101", "20230101", "20210101", None, "20220101"]


def dated_archive(root: Path) -> tuple[SynthArchive, list[str]]:
    """Five studies of three instances; returns the archive and its study UIDs in path order."""
    archive = make_archive(root, explicit_studies=4, implicit_studies=1)
    studies = sorted({archive.study_uids[p] for p in archive.files}, key=_first_path(archive))
    for path in archive.files:
        ds = pydicom.dcmread(path)
        date = DATES[studies.index(archive.study_uids[path])]
        if date is None:
            del ds.StudyDate
        else:
            ds.StudyDate = date
        ds.save_as(path)
    return archive, studies


def _first_path(archive: SynthArchive) -> object:
    def key(study: str) -> str:
        return min(str(p) for p in archive.files if archive.study_uids[p] == study)

    return key


def arrived_studies(scp: PynetdicomSCP) -> list[str]:
    """Study UIDs in the order they arrived, each run of one study once."""
    order: list[str] = []
    for record in scp.received:
        uid = str(record.dataset.StudyInstanceUID)
        if not order or order[-1] != uid:
            order.append(uid)
    return order


def accession(archive: SynthArchive, study: str) -> str:
    path = next(p for p in archive.files if archive.study_uids[p] == study)
    return str(pydicom.dcmread(path, stop_before_pixels=True).AccessionNumber)


@pytest.mark.parametrize(
    ("order", "expected"),
    [
        ("newest-first", [1, 4, 2, 0, 3]),
        ("oldest-first", [0, 2, 4, 1, 3]),
        ("path", [0, 1, 2, 3, 4]),
    ],
)
def test_studies_arrive_in_the_order_asked(tmp_path: Path, order: str, expected: list[int]) -> None:
    archive, studies = dated_archive(tmp_path / "in")
    with PynetdicomSCP() as scp:
        run = fastsend(
            *send_args(scp.host, scp.port, scp.ae_title, str(archive.root)),
            "--order",
            order,
            "--no-progress",
        )
        assert run.returncode == 0, run.output
        assert len(scp.received) == len(archive.files)
        # -P 1: one association, so arrival order is dispatch order; each
        # study's files arrive together.
        assert arrived_studies(scp) == [studies[i] for i in expected]


def test_a_rerun_keeps_skipping_what_is_stored_and_sends_the_rest_in_order(
    tmp_path: Path,
) -> None:
    archive, studies = dated_archive(tmp_path / "in")
    journal = tmp_path / "journal.sqlite"
    first_two = sorted({p.parent.parent for p in archive.files})[:2]  # studies 0 and 1
    with PynetdicomSCP() as scp:
        args = send_args(scp.host, scp.port, scp.ae_title, *map(str, first_two))
        run = fastsend(*args, "--journal", str(journal), "--no-progress")
        assert run.returncode == 0, run.output
        scp.received.clear()
        args = send_args(scp.host, scp.port, scp.ae_title, str(archive.root))
        run = fastsend(*args, "--journal", str(journal), "--order", "oldest-first", "--no-progress")
        assert run.returncode == 0, run.output
        assert "6 already stored" in run.output or "already stored 6" in run.output, run.output
        assert arrived_studies(scp) == [studies[i] for i in (2, 4, 3)]
        assert len(scp.received) == 9


def test_the_priority_list_studies_are_stored_first_in_orthanc(tmp_path: Path) -> None:
    archive, studies = dated_archive(tmp_path / "in")
    priority = tmp_path / "priority.txt"
    # By accession number and by Study Instance UID, and one that is not there.
    priority.write_text(
        f"{accession(archive, studies[3])}\n{studies[0]}\n1.2.826.0.1.3680043.99.99\n"
    )
    orthanc: Orthanc
    with start_orthanc(tmp_path / "orthanc") as orthanc:
        run = fastsend(
            *send_args(orthanc.host, orthanc.dicom_port, orthanc.aet, str(archive.root)),
            "--priority-list",
            str(priority),
            "--order",
            "newest-first",
            "--no-progress",
        )
        assert run.returncode == 0, run.output
        changes = orthanc.rest("GET", "/changes?limit=1000")["Changes"]
        stored = [
            orthanc.rest("GET", change["Path"])["MainDicomTags"]["StudyInstanceUID"]
            for change in changes
            if change["ChangeType"] == "NewStudy"
        ]
    assert stored == [studies[i] for i in (3, 0, 1, 4, 2)]


def test_a_priority_list_that_cannot_be_read_is_a_usage_error(tmp_path: Path) -> None:
    missing = tmp_path / "first.txt"
    run = fastsend(
        *send_args("127.0.0.1", 104, "X", str(tmp_path)), "--priority-list", str(missing)
    )
    assert run.returncode == 2, run.output
    assert f"cannot read the priority list {missing}" in run.stderr, run.stderr
